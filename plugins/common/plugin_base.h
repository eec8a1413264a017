// The IPluginV3 plumbing every maskrt op shares, so that each op's plugin file holds only what is specific to it.
//
// An op is described by a traits struct `Op`:
//   static constexpr char const* kName;                  plugin name = ONNX op_type (version and namespace below)
//   static constexpr int32_t kNbOutputs;
//   using Params = ...;                                   the validated fields
//   static std::vector<FieldSpec> fieldTable();           its fields, once
//   static std::string fromFields(FieldValues const&, Params&);   "" or why the fields are invalid
//   static void toFields(Params const&, FieldValues&);
// and its plugin class derives from PluginBase<Plugin, Op>, implementing (the base checks counts and formats first)
//   std::string checkShapes(Dims const* dims, int32_t nbInputs, int32_t nbOutputs) const;   dims may be null
//   void outputTypes(DataType* out, DataType const* in) const;
//   std::string outputShapes(DimsExprs const* in, int32_t nbInputs, DimsExprs* out, IExprBuilder&) const;
//   bool supportsType(int32_t pos, DynamicPluginTensorDesc const* inOut) const;   linear format already checked
//   std::string run(PluginTensorDesc const* in, void const* const* inputs, void* const* outputs, void* workspace,
//                   cudaStream_t) const;                                          enqueue
// and getWorkspaceSize if it needs one. PluginCreator<Plugin, Op> is its IPluginCreatorV3One.
#pragma once

#include <NvInferRuntime.h>

#include <exception>
#include <new>
#include <string>
#include <vector>

#include "fields.h"
#include "logging.h"

namespace maskrt
{

constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "maskrt";

/// "[2, 300, 4]" (-1 for a dynamic size).
inline std::string describeDims(nvinfer1::Dims const& d)
{
    std::string s = "[";
    for (int32_t i = 0; i < d.nbDims; ++i)
    {
        s += (i ? ", " : "") + std::to_string(d.d[i]);
    }
    return s + "]";
}

/// Two sizes that are both known and differ (-1 = dynamic, matches anything).
inline bool differ(int64_t a, int64_t b)
{
    return a >= 0 && b >= 0 && a != b;
}

/// The op's identity, for both interfaces that report it (the plugin's core capability and its creator).
template <typename Op, typename Interface>
class WithIdentity : public Interface
{
public:
    char const* getPluginName() const noexcept override
    {
        return Op::kName;
    }
    char const* getPluginVersion() const noexcept override
    {
        return kPluginVersion;
    }
    char const* getPluginNamespace() const noexcept override
    {
        return kPluginNamespace;
    }
};

template <typename Plugin, typename Op>
class PluginBase : public nvinfer1::IPluginV3,
                   public WithIdentity<Op, nvinfer1::IPluginV3OneCore>,
                   public nvinfer1::IPluginV3OneBuild,
                   public nvinfer1::IPluginV3OneRuntime
{
public:
    using Params = typename Op::Params;

    explicit PluginBase(Params params)
        : mParams(std::move(params))
    {
    }
    PluginBase(PluginBase const& other)
        : IPluginV3(other)
        , WithIdentity<Op, nvinfer1::IPluginV3OneCore>(other)
        , IPluginV3OneBuild(other)
        , IPluginV3OneRuntime(other)
        , mParams(other.mParams)
    {
    }
    PluginBase& operator=(PluginBase const&) = delete;
    ~PluginBase() override = default;

    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override
    {
        switch (type)
        {
        case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
        case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
        case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }

    nvinfer1::IPluginV3* clone() noexcept override
    {
        try
        {
            return new Plugin(static_cast<Plugin const&>(*this));
        }
        catch (std::exception const& e)
        {
            logError(Op::kName, std::string("clone failed: ") + e.what());
            return nullptr;
        }
    }

    int32_t getNbOutputs() const noexcept override
    {
        return Op::kNbOutputs;
    }

    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const*, int32_t nbOutputs) noexcept override
    {
        return checkDescs(in, nbInputs, nbOutputs, "configurePlugin", [](auto const& d) { return d.desc.dims; });
    }

    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const*,
        int32_t nbOutputs) noexcept override
    {
        return checkDescs(in, nbInputs, nbOutputs, "onShapeChange", [](auto const& d) { return d.dims; });
    }

    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override
    {
        if (checkCounts(nbInputs, nbOutputs, "getOutputDataTypes") != 0)
        {
            return -1;
        }
        self().outputTypes(outputTypes, inputTypes);
        return 0;
    }

    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const*, int32_t,
        nvinfer1::DimsExprs* outputs, int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override
    {
        if (checkCounts(nbInputs, nbOutputs, "getOutputShapes") != 0)
        {
            return -1;
        }
        return guarded("getOutputShapes", [&] { return self().outputShapes(inputs, nbInputs, outputs, exprBuilder); });
    }

    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override
    {
        return inOut != nullptr && pos >= 0 && pos < nbInputs + nbOutputs
            && self().checkShapes(nullptr, nbInputs, nbOutputs).empty()
            && inOut[pos].desc.format == nvinfer1::TensorFormat::kLINEAR && self().supportsType(pos, inOut);
    }

    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const*, int32_t, nvinfer1::DynamicPluginTensorDesc const*,
        int32_t) const noexcept override
    {
        return 0;
    }

    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const*,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override
    {
        return guarded("enqueue", [&] { return self().run(inputDesc, inputs, outputs, workspace, stream); });
    }

    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext*) noexcept override
    {
        return clone();
    }

    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override
    {
        Op::toFields(mParams, mSerialized);
        return mSerialized.collection();
    }

protected:
    /// Logs "<Op>::<method>: <error>" when `error` is not empty; returns 0 (no error) or -1.
    static int32_t report(std::string const& error, char const* method)
    {
        if (error.empty())
        {
            return 0;
        }
        logError((std::string(Op::kName) + "::" + method).c_str(), error);
        return -1;
    }

    /// The op's checkShapes on the input/output counts only (no dims), logged on failure.
    int32_t checkCounts(int32_t nbInputs, int32_t nbOutputs, char const* method) const
    {
        return report(self().checkShapes(nullptr, nbInputs, nbOutputs), method);
    }

    Plugin const& self() const
    {
        return static_cast<Plugin const&>(*this);
    }

    Params mParams;

private:
    /// Runs `body` (returning "" or an error), logging its error or exception; 0 or -1.
    template <typename Body>
    int32_t guarded(char const* method, Body body) const noexcept
    {
        try
        {
            return report(body(), method);
        }
        catch (std::exception const& e)
        {
            return report(e.what(), method);
        }
    }

    template <typename Desc, typename GetDims>
    int32_t checkDescs(Desc const* in, int32_t nbInputs, int32_t nbOutputs, char const* method, GetDims dims) noexcept
    {
        return guarded(method, [&] {
            std::vector<nvinfer1::Dims> shapes;
            for (int32_t i = 0; in != nullptr && i < nbInputs; ++i)
            {
                shapes.push_back(dims(in[i]));
            }
            return self().checkShapes(in != nullptr ? shapes.data() : nullptr, nbInputs, nbOutputs);
        });
    }

    FieldValues mSerialized{Op::fieldTable()};
};

template <typename Plugin, typename Op>
class PluginCreator : public WithIdentity<Op, nvinfer1::IPluginCreatorV3One>
{
public:
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase) noexcept override
    {
        std::string const where = std::string(Op::kName) + " creator";
        try
        {
            FieldValues values(Op::fieldTable());
            typename Op::Params params{};
            std::string error = values.parse(fc);
            if (error.empty())
            {
                error = Op::fromFields(values, params);
            }
            if (!error.empty())
            {
                logError(where.c_str(), "rejected fields of layer '" + std::string(name != nullptr ? name : "") + "': "
                    + error);
                return nullptr;
            }
            return new Plugin(std::move(params));
        }
        catch (std::exception const& e)
        {
            logError(where.c_str(), std::string("failed: ") + e.what());
            return nullptr;
        }
    }

    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override
    {
        return mNames.names();
    }

private:
    FieldValues mNames{Op::fieldTable()};
};

} // namespace maskrt
