// Shared glue of the extern "C" launchers (host_api.cpp, the CUDA launchers): error reporting to the caller.
#pragma once

#include <cstdio>
#include <string>

namespace maskrt
{

/// Writes `message` into the caller's error buffer and returns -1 (the launchers' "invalid arguments" status).
inline int failWith(char* err, int errLen, std::string const& message)
{
    if (err != nullptr && errLen > 0)
    {
        std::snprintf(err, static_cast<size_t>(errLen), "%s", message.c_str());
    }
    return -1;
}

} // namespace maskrt
