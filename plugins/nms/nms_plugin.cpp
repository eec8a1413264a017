#include "nms_plugin.h"

#include <exception>
#include <new>
#include <set>

#include "../common/logging.h"
#include "../common/plugin_fields.h"
#include "nms_kernel.h"
#include "nms_params.h"

namespace maskrt
{
namespace nms
{

using namespace nvinfer1;

namespace
{

char const* const kFloatFieldNames[] = {"iou_threshold", "score_threshold"};
char const* const kMaxOutputField = "max_output_boxes";
// Written by TensorRT's ONNX parser from the node's attributes of the same name; accepted and ignored.
char const* const kIgnoredFields[] = {"plugin_version", "plugin_namespace"};

std::string describeDims(Dims const& d)
{
    std::string s = "[";
    for (int32_t i = 0; i < d.nbDims; ++i)
    {
        s += (i ? ", " : "") + std::to_string(d.d[i]);
    }
    return s + "]";
}

/// Two known sizes that differ (-1 = dynamic matches anything).
bool differ(int64_t a, int64_t b)
{
    return a >= 0 && b >= 0 && a != b;
}

} // namespace

bool parseFields(PluginFieldCollection const* fc, Params& params, std::string& error)
{
    if (fc == nullptr || (fc->nbFields > 0 && fc->fields == nullptr))
    {
        error = "no field collection";
        return false;
    }
    float floats[2] = {};
    int64_t maxOutput = 0;
    std::set<std::string> seen;
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        std::string const name = f.name != nullptr ? f.name : "";
        if (!seen.insert(name).second)
        {
            error = "field '" + name + "' given twice";
            return false;
        }
        bool known = false;
        for (int k = 0; k < 2; ++k)
        {
            if (name == kFloatFieldNames[k])
            {
                known = true;
                std::vector<float> v;
                if (!readFloats(f, v) || v.size() != 1)
                {
                    error = "field '" + name + "' must be one float (got type " + fieldTypeName(f.type) + ", length "
                        + std::to_string(f.length) + ")";
                    return false;
                }
                floats[k] = v[0];
            }
        }
        if (name == kMaxOutputField)
        {
            known = true;
            if (!readInt(f, maxOutput) || maxOutput < INT32_MIN || maxOutput > INT32_MAX)
            {
                error = "field 'max_output_boxes' must be one 32-bit integer (got type " + std::string(fieldTypeName(
                    f.type)) + ", length " + std::to_string(f.length) + ")";
                return false;
            }
        }
        for (char const* ignored : kIgnoredFields)
        {
            known = known || name == ignored;
        }
        if (!known)
        {
            error = "unknown field '" + name + "'";
            return false;
        }
    }
    std::string missing;
    for (char const* name : {kFloatFieldNames[0], kFloatFieldNames[1], kMaxOutputField})
    {
        missing += seen.count(name) ? "" : std::string(missing.empty() ? "" : ", ") + name;
    }
    if (!missing.empty())
    {
        error = "missing field(s): " + missing;
        return false;
    }
    params = Params{floats[0], floats[1], static_cast<int>(maxOutput)};
    error = checkParams(params);
    return error.empty();
}

// ---------------------------------------------------------------------------------------------------------------
// NMSPlugin

NMSPlugin::NMSPlugin(Params params)
    : mParams(params)
{
}

NMSPlugin::NMSPlugin(NMSPlugin const& other)
    : IPluginV3(other)
    , IPluginV3OneCore(other)
    , IPluginV3OneBuild(other)
    , IPluginV3OneRuntime(other)
    , mParams(other.mParams)
{
}

IPluginCapability* NMSPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

IPluginV3* NMSPlugin::clone() noexcept
{
    try
    {
        return new NMSPlugin(*this);
    }
    catch (std::exception const& e)
    {
        logError(kPluginName, std::string("clone failed: ") + e.what());
        return nullptr;
    }
}

char const* NMSPlugin::getPluginName() const noexcept
{
    return kPluginName;
}

char const* NMSPlugin::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* NMSPlugin::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

int32_t NMSPlugin::getNbOutputs() const noexcept
{
    return 2;
}

bool NMSPlugin::checkInputs(Dims const* dims, int32_t nbInputs, int32_t nbOutputs, char const* where) const
{
    std::string error;
    if (nbInputs != 3 || nbOutputs != 2)
    {
        error = "expects 3 inputs (boxes, scores, groups) and 2 outputs (keep, count), got " + std::to_string(nbInputs)
            + " input(s) and " + std::to_string(nbOutputs) + " output(s)";
    }
    else if (dims != nullptr)
    {
        Dims const& boxes = dims[0];
        Dims const& scores = dims[1];
        Dims const& groups = dims[2];
        if (boxes.nbDims != 3 || differ(boxes.d[2], 4))
        {
            error = "boxes must be [B, N, 4], got " + describeDims(boxes);
        }
        else if (scores.nbDims != 2 || differ(scores.d[0], boxes.d[0]) || differ(scores.d[1], boxes.d[1]))
        {
            error = "scores must be [B, N] like boxes " + describeDims(boxes) + ", got " + describeDims(scores);
        }
        else if (groups.nbDims != 2 || differ(groups.d[0], boxes.d[0]) || differ(groups.d[1], boxes.d[1]))
        {
            error = "groups must be [B, N] like boxes " + describeDims(boxes) + ", got " + describeDims(groups);
        }
        else if (boxes.d[1] > 0x7fffffffLL || boxes.d[0] > 65535)
        {
            error = "at most 65535 images of 2^31 - 1 boxes, got " + describeDims(boxes);
        }
    }
    if (!error.empty())
    {
        logError(where, error);
        return false;
    }
    return true;
}

int32_t NMSPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const*, int32_t nbOutputs) noexcept
{
    if (nbInputs != 3)
    {
        return checkInputs(nullptr, nbInputs, nbOutputs, "BatchedNMS::configurePlugin") ? 0 : -1;
    }
    Dims const dims[3] = {in[0].desc.dims, in[1].desc.dims, in[2].desc.dims};
    return checkInputs(dims, nbInputs, nbOutputs, "BatchedNMS::configurePlugin") ? 0 : -1;
}

int32_t NMSPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const*, int32_t nbInputs) const noexcept
{
    if (!checkInputs(nullptr, nbInputs, nbOutputs, "BatchedNMS::getOutputDataTypes"))
    {
        return -1;
    }
    outputTypes[0] = DataType::kINT32;
    outputTypes[1] = DataType::kINT32;
    return 0;
}

int32_t NMSPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
    DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    if (!checkInputs(nullptr, nbInputs, nbOutputs, "BatchedNMS::getOutputShapes"))
    {
        return -1;
    }
    if (inputs[0].nbDims != 3 || inputs[1].nbDims != 2 || inputs[2].nbDims != 2)
    {
        logError("BatchedNMS::getOutputShapes", "boxes must have rank 3 [B, N, 4], scores and groups rank 2 [B, N]");
        return -1;
    }
    outputs[0].nbDims = 2;
    outputs[0].d[0] = inputs[0].d[0];
    outputs[0].d[1] = exprBuilder.constant(mParams.maxOutputBoxes);
    outputs[1].nbDims = 1;
    outputs[1].d[0] = inputs[0].d[0];
    return 0;
}

bool NMSPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (inOut == nullptr || pos < 0 || pos >= nbInputs + nbOutputs || nbInputs != 3)
    {
        return false;
    }
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    switch (pos)
    {
    case 0: return desc.type == DataType::kFLOAT;
    case 1: return desc.type == DataType::kFLOAT || desc.type == DataType::kHALF;
    default: return desc.type == DataType::kINT32; // groups, keep, count
    }
}

size_t NMSPlugin::getWorkspaceSize(
    DynamicPluginTensorDesc const* inputs, int32_t nbInputs, DynamicPluginTensorDesc const*, int32_t) const noexcept
{
    if (inputs == nullptr || nbInputs != 3 || inputs[0].max.nbDims != 3)
    {
        return 0;
    }
    return workspaceSize(inputs[0].max.d[0], inputs[0].max.d[1]);
}

int32_t NMSPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const*, int32_t nbOutputs) noexcept
{
    if (nbInputs != 3)
    {
        return checkInputs(nullptr, nbInputs, nbOutputs, "BatchedNMS::onShapeChange") ? 0 : -1;
    }
    Dims const dims[3] = {in[0].dims, in[1].dims, in[2].dims};
    return checkInputs(dims, nbInputs, nbOutputs, "BatchedNMS::onShapeChange") ? 0 : -1;
}

int32_t NMSPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*, void const* const* inputs,
    void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    Dims const& boxes = inputDesc[0].dims;
    ScoreType const type = inputDesc[1].type == DataType::kHALF ? ScoreType::kHALF : ScoreType::kFLOAT;
    cudaError_t const status = launch(static_cast<float const*>(inputs[0]), inputs[1], type,
        static_cast<int32_t const*>(inputs[2]), boxes.d[0], boxes.d[1], mParams, static_cast<int32_t*>(outputs[0]),
        static_cast<int32_t*>(outputs[1]), workspace, stream);
    if (status != cudaSuccess)
    {
        logError("BatchedNMS::enqueue", std::string("kernel launch failed: ") + cudaGetErrorString(status));
        return -1;
    }
    return 0;
}

IPluginV3* NMSPlugin::attachToContext(IPluginResourceContext*) noexcept
{
    return clone();
}

PluginFieldCollection const* NMSPlugin::getFieldsToSerialize() noexcept
{
    mFloats[0] = mParams.iouThreshold;
    mFloats[1] = mParams.scoreThreshold;
    mMaxOutputBoxes = mParams.maxOutputBoxes;
    mFieldsToSerialize.clear();
    for (int k = 0; k < 2; ++k)
    {
        mFieldsToSerialize.emplace_back(kFloatFieldNames[k], &mFloats[k], PluginFieldType::kFLOAT32, 1);
    }
    mFieldsToSerialize.emplace_back(kMaxOutputField, &mMaxOutputBoxes, PluginFieldType::kINT32, 1);
    mFieldCollection.nbFields = static_cast<int32_t>(mFieldsToSerialize.size());
    mFieldCollection.fields = mFieldsToSerialize.data();
    return &mFieldCollection;
}

// ---------------------------------------------------------------------------------------------------------------
// NMSPluginCreator

NMSPluginCreator::NMSPluginCreator()
{
    for (char const* name : kFloatFieldNames)
    {
        mFieldNames.emplace_back(name, nullptr, PluginFieldType::kFLOAT32, 1);
    }
    mFieldNames.emplace_back(kMaxOutputField, nullptr, PluginFieldType::kINT32, 1);
    mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFieldCollection.fields = mFieldNames.data();
}

IPluginV3* NMSPluginCreator::createPlugin(char const* name, PluginFieldCollection const* fc, TensorRTPhase) noexcept
{
    try
    {
        Params params{};
        std::string error;
        if (!parseFields(fc, params, error))
        {
            logError("BatchedNMS creator",
                std::string("rejected fields of layer '") + (name != nullptr ? name : "") + "': " + error);
            return nullptr;
        }
        return new NMSPlugin(params);
    }
    catch (std::exception const& e)
    {
        logError("BatchedNMS creator", std::string("failed: ") + e.what());
        return nullptr;
    }
}

PluginFieldCollection const* NMSPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

char const* NMSPluginCreator::getPluginName() const noexcept
{
    return kPluginName;
}

char const* NMSPluginCreator::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* NMSPluginCreator::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

} // namespace nms
} // namespace maskrt
