// Reading and writing nvinfer1::PluginField values, shared by every plugin of the library.
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace maskrt
{

/// Reads an integer field of length 1 (INT8/16/32/64 accepted); returns false on a type or length mismatch.
inline bool readInt(nvinfer1::PluginField const& f, int64_t& value)
{
    using nvinfer1::PluginFieldType;
    if (f.data == nullptr || f.length != 1)
    {
        return false;
    }
    switch (f.type)
    {
    case PluginFieldType::kINT8: value = *static_cast<int8_t const*>(f.data); return true;
    case PluginFieldType::kINT16: value = *static_cast<int16_t const*>(f.data); return true;
    case PluginFieldType::kINT32: value = *static_cast<int32_t const*>(f.data); return true;
    case PluginFieldType::kINT64: value = *static_cast<int64_t const*>(f.data); return true;
    default: return false;
    }
}

/// Reads a float field (FLOAT32/FLOAT64) of any length >= 1; returns false on a type mismatch.
inline bool readFloats(nvinfer1::PluginField const& f, std::vector<float>& values)
{
    using nvinfer1::PluginFieldType;
    if (f.data == nullptr || f.length < 1)
    {
        return false;
    }
    values.resize(static_cast<size_t>(f.length));
    for (int32_t i = 0; i < f.length; ++i)
    {
        if (f.type == PluginFieldType::kFLOAT32)
        {
            values[i] = static_cast<float const*>(f.data)[i];
        }
        else if (f.type == PluginFieldType::kFLOAT64)
        {
            values[i] = static_cast<float>(static_cast<double const*>(f.data)[i]);
        }
        else
        {
            return false;
        }
    }
    return true;
}

inline char const* fieldTypeName(nvinfer1::PluginFieldType type)
{
    switch (type)
    {
    case nvinfer1::PluginFieldType::kFLOAT16: return "FLOAT16";
    case nvinfer1::PluginFieldType::kFLOAT32: return "FLOAT32";
    case nvinfer1::PluginFieldType::kFLOAT64: return "FLOAT64";
    case nvinfer1::PluginFieldType::kINT8: return "INT8";
    case nvinfer1::PluginFieldType::kINT16: return "INT16";
    case nvinfer1::PluginFieldType::kINT32: return "INT32";
    case nvinfer1::PluginFieldType::kINT64: return "INT64";
    case nvinfer1::PluginFieldType::kCHAR: return "CHAR";
    default: return "other";
    }
}

} // namespace maskrt
