// Logging for the plugin library: messages go to the logger that TensorRT hands over through setLoggerFinder
// (plugins/library.cpp), or to stderr when no logger is known yet.
#pragma once

#include <NvInferRuntime.h>

#include <string>

namespace maskrt
{

/// Remembers the finder given to the library's setLoggerFinder (may be null).
void setLoggerFinder(nvinfer1::ILoggerFinder* finder);

/// Logs `message` prefixed with "[maskrt] <where>: ".
void log(nvinfer1::ILogger::Severity severity, char const* where, std::string const& message);

inline void logError(char const* where, std::string const& message)
{
    log(nvinfer1::ILogger::Severity::kERROR, where, message);
}

} // namespace maskrt
