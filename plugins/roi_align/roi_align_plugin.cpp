#include "roi_align_plugin.h"

#include <cstring>
#include <exception>
#include <new>
#include <set>

#include "../common/logging.h"
#include "../common/plugin_fields.h"
#include "roi_align_kernel.h"
#include "roi_align_params.h"

namespace maskrt
{
namespace roi_align
{

using namespace nvinfer1;

namespace
{

char const* const kIntFieldNames[] = {"output_height", "output_width", "sampling_ratio", "aligned", "canonical_level"};
char const* const kFloatFieldNames[] = {"canonical_scale", "level_eps"};
char const* const kScalesField = "spatial_scales";
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

} // namespace

bool parseFields(PluginFieldCollection const* fc, Fields& fields, std::string& error)
{
    if (fc == nullptr || (fc->nbFields > 0 && fc->fields == nullptr))
    {
        error = "no field collection";
        return false;
    }
    int64_t ints[5] = {};
    float floats[2] = {};
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
        for (int k = 0; k < 5; ++k)
        {
            if (name == kIntFieldNames[k])
            {
                known = true;
                if (!readInt(f, ints[k]) || ints[k] < INT32_MIN || ints[k] > INT32_MAX)
                {
                    error = "field '" + name + "' must be one 32-bit integer (got type " + fieldTypeName(f.type)
                        + ", length " + std::to_string(f.length) + ")";
                    return false;
                }
            }
        }
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
        if (name == kScalesField)
        {
            known = true;
            if (!readFloats(f, fields.spatialScales))
            {
                error = std::string("field 'spatial_scales' must be a list of floats (got type ")
                    + fieldTypeName(f.type) + ")";
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
    for (char const* name : kIntFieldNames)
    {
        missing += seen.count(name) ? "" : std::string(missing.empty() ? "" : ", ") + name;
    }
    for (char const* name : kFloatFieldNames)
    {
        missing += seen.count(name) ? "" : std::string(missing.empty() ? "" : ", ") + name;
    }
    if (!seen.count(kScalesField))
    {
        missing += std::string(missing.empty() ? "" : ", ") + kScalesField;
    }
    if (!missing.empty())
    {
        error = "missing field(s): " + missing;
        return false;
    }
    fields.params = Params{static_cast<int>(ints[0]), static_cast<int>(ints[1]), static_cast<int>(ints[2]),
        static_cast<int>(ints[3]), static_cast<int>(ints[4]), floats[0], floats[1]};
    error = checkParams(
        fields.params, static_cast<int>(fields.spatialScales.size()), fields.spatialScales.data(), fields.firstLevel);
    return error.empty();
}

// ---------------------------------------------------------------------------------------------------------------
// RoIAlignPlugin

RoIAlignPlugin::RoIAlignPlugin(Fields fields)
    : mFields(std::move(fields))
{
}

RoIAlignPlugin::RoIAlignPlugin(RoIAlignPlugin const& other)
    : IPluginV3(other)
    , IPluginV3OneCore(other)
    , IPluginV3OneBuild(other)
    , IPluginV3OneRuntime(other)
    , mFields(other.mFields)
{
}

IPluginCapability* RoIAlignPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

IPluginV3* RoIAlignPlugin::clone() noexcept
{
    try
    {
        return new RoIAlignPlugin(*this);
    }
    catch (std::exception const& e)
    {
        logError(kPluginName, std::string("clone failed: ") + e.what());
        return nullptr;
    }
}

char const* RoIAlignPlugin::getPluginName() const noexcept
{
    return kPluginName;
}

char const* RoIAlignPlugin::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* RoIAlignPlugin::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

int32_t RoIAlignPlugin::getNbOutputs() const noexcept
{
    return 1;
}

bool RoIAlignPlugin::checkInputs(Dims const* dims, int32_t nbInputs, int32_t nbOutputs, char const* where) const
{
    int32_t const levels = static_cast<int32_t>(mFields.spatialScales.size());
    std::string error;
    if (nbInputs != 1 + levels || nbOutputs != 1)
    {
        error = "expects rois + " + std::to_string(levels) + " feature map(s) (one per spatial_scales value) and one "
            "output, got " + std::to_string(nbInputs) + " input(s) and " + std::to_string(nbOutputs) + " output(s)";
    }
    else if (dims != nullptr)
    {
        Dims const& rois = dims[0];
        if (rois.nbDims != 3 || (rois.d[2] >= 0 && rois.d[2] != 4))
        {
            error = "rois must be [B, R, 4], got " + describeDims(rois);
        }
        for (int32_t i = 1; i < nbInputs && error.empty(); ++i)
        {
            Dims const& f = dims[i];
            bool const batchMismatch = f.nbDims == 4 && f.d[0] >= 0 && rois.d[0] >= 0 && f.d[0] != rois.d[0];
            bool const channelMismatch = f.nbDims == 4 && f.d[1] >= 0 && dims[1].d[1] >= 0 && f.d[1] != dims[1].d[1];
            if (f.nbDims != 4 || batchMismatch || channelMismatch)
            {
                error = "feature map " + std::to_string(i - 1) + " must be [B, C, H, W] with the B of rois and the C "
                    "of the first map, got " + describeDims(f) + " (rois " + describeDims(rois) + ")";
            }
        }
    }
    if (!error.empty())
    {
        logError(where, error);
        return false;
    }
    return true;
}

int32_t RoIAlignPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const*, int32_t nbOutputs) noexcept
{
    if (nbInputs < 1 || nbInputs > 1 + kMaxLevels)
    {
        return checkInputs(nullptr, nbInputs, nbOutputs, "MultiLevelRoIAlign::configurePlugin") ? 0 : -1;
    }
    Dims dims[1 + kMaxLevels];
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        dims[i] = in[i].desc.dims;
    }
    return checkInputs(dims, nbInputs, nbOutputs, "MultiLevelRoIAlign::configurePlugin") ? 0 : -1;
}

int32_t RoIAlignPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (!checkInputs(nullptr, nbInputs, nbOutputs, "MultiLevelRoIAlign::getOutputDataTypes"))
    {
        return -1;
    }
    outputTypes[0] = inputTypes[1];
    return 0;
}

int32_t RoIAlignPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
    DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    if (!checkInputs(nullptr, nbInputs, nbOutputs, "MultiLevelRoIAlign::getOutputShapes"))
    {
        return -1;
    }
    if (inputs[0].nbDims != 3)
    {
        logError("MultiLevelRoIAlign::getOutputShapes", "rois must have rank 3 [B, R, 4]");
        return -1;
    }
    for (int32_t i = 1; i < nbInputs; ++i)
    {
        if (inputs[i].nbDims != 4)
        {
            logError("MultiLevelRoIAlign::getOutputShapes",
                "feature map " + std::to_string(i - 1) + " must have rank 4 [B, C, H, W]");
            return -1;
        }
    }
    outputs[0].nbDims = 5;
    outputs[0].d[0] = inputs[0].d[0];
    outputs[0].d[1] = inputs[0].d[1];
    outputs[0].d[2] = inputs[1].d[1];
    outputs[0].d[3] = exprBuilder.constant(mFields.params.outHeight);
    outputs[0].d[4] = exprBuilder.constant(mFields.params.outWidth);
    return 0;
}

bool RoIAlignPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (inOut == nullptr || pos < 0 || pos >= nbInputs + nbOutputs || nbInputs < 2)
    {
        return false;
    }
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    if (pos == 0)
    {
        return desc.type == DataType::kFLOAT;
    }
    if (pos == 1)
    {
        return desc.type == DataType::kFLOAT || desc.type == DataType::kHALF;
    }
    return desc.type == inOut[1].desc.type; // the other feature maps and the output
}

size_t RoIAlignPlugin::getWorkspaceSize(
    DynamicPluginTensorDesc const*, int32_t, DynamicPluginTensorDesc const*, int32_t) const noexcept
{
    return 0;
}

int32_t RoIAlignPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const*, int32_t nbOutputs) noexcept
{
    if (nbInputs < 1 || nbInputs > 1 + kMaxLevels)
    {
        return checkInputs(nullptr, nbInputs, nbOutputs, "MultiLevelRoIAlign::onShapeChange") ? 0 : -1;
    }
    Dims dims[1 + kMaxLevels];
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        dims[i] = in[i].dims;
    }
    return checkInputs(dims, nbInputs, nbOutputs, "MultiLevelRoIAlign::onShapeChange") ? 0 : -1;
}

int32_t RoIAlignPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void*, cudaStream_t stream) noexcept
{
    int32_t const nbLevels = static_cast<int32_t>(mFields.spatialScales.size());
    Levels levels{};
    levels.count = nbLevels;
    levels.firstLevel = mFields.firstLevel;
    for (int32_t l = 0; l < nbLevels; ++l)
    {
        Dims const& d = inputDesc[1 + l].dims;
        levels.data[l] = inputs[1 + l];
        levels.height[l] = d.d[2];
        levels.width[l] = d.d[3];
        levels.scale[l] = mFields.spatialScales[l];
    }
    Dims const& rois = inputDesc[0].dims;
    FeatureType const type = inputDesc[1].type == DataType::kHALF ? FeatureType::kHALF : FeatureType::kFLOAT;
    (void) outputDesc;
    cudaError_t const status = launch(static_cast<float const*>(inputs[0]), levels, mFields.params, rois.d[0],
        rois.d[1], inputDesc[1].dims.d[1], type, outputs[0], stream);
    if (status != cudaSuccess)
    {
        logError("MultiLevelRoIAlign::enqueue", std::string("kernel launch failed: ") + cudaGetErrorString(status));
        return -1;
    }
    return 0;
}

IPluginV3* RoIAlignPlugin::attachToContext(IPluginResourceContext*) noexcept
{
    return clone();
}

PluginFieldCollection const* RoIAlignPlugin::getFieldsToSerialize() noexcept
{
    Params const& p = mFields.params;
    int32_t const ints[5] = {p.outHeight, p.outWidth, p.samplingRatio, p.aligned, p.canonicalLevel};
    std::memcpy(mInts, ints, sizeof mInts);
    mFloats[0] = p.canonicalScale;
    mFloats[1] = p.levelEps;
    mFieldsToSerialize.clear();
    for (int k = 0; k < 5; ++k)
    {
        mFieldsToSerialize.emplace_back(kIntFieldNames[k], &mInts[k], PluginFieldType::kINT32, 1);
    }
    mFieldsToSerialize.emplace_back(kScalesField, mFields.spatialScales.data(), PluginFieldType::kFLOAT32,
        static_cast<int32_t>(mFields.spatialScales.size()));
    for (int k = 0; k < 2; ++k)
    {
        mFieldsToSerialize.emplace_back(kFloatFieldNames[k], &mFloats[k], PluginFieldType::kFLOAT32, 1);
    }
    mFieldCollection.nbFields = static_cast<int32_t>(mFieldsToSerialize.size());
    mFieldCollection.fields = mFieldsToSerialize.data();
    return &mFieldCollection;
}

// ---------------------------------------------------------------------------------------------------------------
// RoIAlignPluginCreator

RoIAlignPluginCreator::RoIAlignPluginCreator()
{
    for (char const* name : kIntFieldNames)
    {
        mFieldNames.emplace_back(name, nullptr, PluginFieldType::kINT32, 1);
    }
    mFieldNames.emplace_back(kScalesField, nullptr, PluginFieldType::kFLOAT32, 0);
    for (char const* name : kFloatFieldNames)
    {
        mFieldNames.emplace_back(name, nullptr, PluginFieldType::kFLOAT32, 1);
    }
    mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFieldCollection.fields = mFieldNames.data();
}

IPluginV3* RoIAlignPluginCreator::createPlugin(char const* name, PluginFieldCollection const* fc, TensorRTPhase) noexcept
{
    try
    {
        Fields fields;
        std::string error;
        if (!parseFields(fc, fields, error))
        {
            logError("MultiLevelRoIAlign creator",
                std::string("rejected fields of layer '") + (name != nullptr ? name : "") + "': " + error);
            return nullptr;
        }
        return new RoIAlignPlugin(std::move(fields));
    }
    catch (std::exception const& e)
    {
        logError("MultiLevelRoIAlign creator", std::string("failed: ") + e.what());
        return nullptr;
    }
}

PluginFieldCollection const* RoIAlignPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

char const* RoIAlignPluginCreator::getPluginName() const noexcept
{
    return kPluginName;
}

char const* RoIAlignPluginCreator::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* RoIAlignPluginCreator::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

} // namespace roi_align
} // namespace maskrt
