// Plugin fields from one table per op: parsing a PluginFieldCollection (creator), serializing it (getFieldsToSerialize)
// and describing it (getFieldNames), so that each op declares its fields once.
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace maskrt
{

enum class FieldKind
{
    kInt32,       // one integer (INT8/16/32/64 accepted when parsing, INT32 written)
    kFloat32,     // one float (FLOAT32/FLOAT64 accepted, FLOAT32 written)
    kFloat32List, // one or more floats
};

struct FieldSpec
{
    char const* name;
    FieldKind kind;
};

/// The values of an op's fields, in the order of its table. Every field is required when parsing.
class FieldValues
{
public:
    explicit FieldValues(std::vector<FieldSpec> table)
        : mTable(std::move(table))
        , mInts(mTable.size(), 0)
        , mFloats(mTable.size())
    {
    }

    int32_t getInt(char const* name) const
    {
        return mInts[index(name)];
    }
    float getFloat(char const* name) const
    {
        return mFloats[index(name)].at(0);
    }
    std::vector<float> const& getFloats(char const* name) const
    {
        return mFloats[index(name)];
    }
    void setInt(char const* name, int32_t value)
    {
        mInts[index(name)] = value;
    }
    void setFloat(char const* name, float value)
    {
        mFloats[index(name)].assign(1, value);
    }
    void setFloats(char const* name, std::vector<float> values)
    {
        mFloats[index(name)] = std::move(values);
    }

    /// Reads a collection: every field of the table once, with its type; plugin_version / plugin_namespace (written
    /// by TensorRT's ONNX parser from the node's attributes) are accepted and ignored. Returns "" or the reason.
    std::string parse(nvinfer1::PluginFieldCollection const* fc)
    {
        if (fc == nullptr || (fc->nbFields > 0 && fc->fields == nullptr))
        {
            return "no field collection";
        }
        std::set<std::string> seen;
        for (int32_t i = 0; i < fc->nbFields; ++i)
        {
            nvinfer1::PluginField const& f = fc->fields[i];
            std::string const name = f.name != nullptr ? f.name : "";
            if (!seen.insert(name).second)
            {
                return "field '" + name + "' given twice";
            }
            if (name == "plugin_version" || name == "plugin_namespace")
            {
                continue;
            }
            size_t const k = find(name);
            if (k == mTable.size())
            {
                return "unknown field '" + name + "'";
            }
            std::string const error = read(f, k);
            if (!error.empty())
            {
                return error;
            }
        }
        std::string missing;
        for (FieldSpec const& spec : mTable)
        {
            if (seen.count(spec.name) == 0)
            {
                missing += (missing.empty() ? "" : ", ") + std::string(spec.name);
            }
        }
        return missing.empty() ? std::string() : "missing field(s): " + missing;
    }

    /// The fields as a collection pointing into this object (valid until it changes or is destroyed).
    nvinfer1::PluginFieldCollection const* collection()
    {
        mFields.clear();
        for (size_t k = 0; k < mTable.size(); ++k)
        {
            FieldSpec const& spec = mTable[k];
            if (spec.kind == FieldKind::kInt32)
            {
                mFields.emplace_back(spec.name, &mInts[k], nvinfer1::PluginFieldType::kINT32, 1);
            }
            else
            {
                mFields.emplace_back(spec.name, mFloats[k].data(), nvinfer1::PluginFieldType::kFLOAT32,
                    static_cast<int32_t>(mFloats[k].size()));
            }
        }
        mCollection.nbFields = static_cast<int32_t>(mFields.size());
        mCollection.fields = mFields.data();
        return &mCollection;
    }

    /// The names and types of the fields, without data (IPluginCreatorV3One::getFieldNames).
    nvinfer1::PluginFieldCollection const* names()
    {
        collection();
        for (size_t k = 0; k < mFields.size(); ++k)
        {
            mFields[k].data = nullptr;
            mFields[k].length = mTable[k].kind == FieldKind::kFloat32List ? 0 : 1;
        }
        return &mCollection;
    }

private:
    size_t find(std::string const& name) const
    {
        size_t k = 0;
        while (k < mTable.size() && name != mTable[k].name)
        {
            ++k;
        }
        return k;
    }

    /// Index of a field the op's own code names (a typo is a programming error: it throws).
    size_t index(char const* name) const
    {
        size_t const k = find(name);
        if (k == mTable.size())
        {
            throw std::out_of_range(std::string("no plugin field ") + name);
        }
        return k;
    }

    static char const* typeName(nvinfer1::PluginFieldType type)
    {
        using T = nvinfer1::PluginFieldType;
        switch (type)
        {
        case T::kFLOAT16: return "FLOAT16";
        case T::kFLOAT32: return "FLOAT32";
        case T::kFLOAT64: return "FLOAT64";
        case T::kINT8: return "INT8";
        case T::kINT16: return "INT16";
        case T::kINT32: return "INT32";
        case T::kINT64: return "INT64";
        case T::kCHAR: return "CHAR";
        default: return "other";
        }
    }

    std::string read(nvinfer1::PluginField const& f, size_t k)
    {
        using T = nvinfer1::PluginFieldType;
        FieldSpec const& spec = mTable[k];
        std::string const got = std::string(" (got type ") + typeName(f.type) + ", length " + std::to_string(f.length)
            + ")";
        if (spec.kind == FieldKind::kInt32)
        {
            int64_t v = 0;
            bool ok = f.data != nullptr && f.length == 1;
            if (ok)
            {
                switch (f.type)
                {
                case T::kINT8: v = *static_cast<int8_t const*>(f.data); break;
                case T::kINT16: v = *static_cast<int16_t const*>(f.data); break;
                case T::kINT32: v = *static_cast<int32_t const*>(f.data); break;
                case T::kINT64: v = *static_cast<int64_t const*>(f.data); break;
                default: ok = false;
                }
            }
            if (!ok || v < INT32_MIN || v > INT32_MAX)
            {
                return "field '" + std::string(spec.name) + "' must be one 32-bit integer" + got;
            }
            mInts[k] = static_cast<int32_t>(v);
            return std::string();
        }
        bool const ok = f.data != nullptr && f.length >= 1 && (f.type == T::kFLOAT32 || f.type == T::kFLOAT64)
            && (spec.kind == FieldKind::kFloat32List || f.length == 1);
        if (!ok)
        {
            return "field '" + std::string(spec.name) + "' must be "
                + (spec.kind == FieldKind::kFloat32 ? "one float" : "a list of floats") + got;
        }
        std::vector<float>& out = mFloats[k];
        out.resize(static_cast<size_t>(f.length));
        for (int32_t i = 0; i < f.length; ++i)
        {
            out[i] = f.type == T::kFLOAT32 ? static_cast<float const*>(f.data)[i]
                                           : static_cast<float>(static_cast<double const*>(f.data)[i]);
        }
        return std::string();
    }

    std::vector<FieldSpec> mTable;
    std::vector<int32_t> mInts;
    std::vector<std::vector<float>> mFloats;
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

} // namespace maskrt
