#include "roi_align/roi_align_plugin.h"

#include "common/logging.h"
#include "roi_align/roi_align_kernel.h"
#include "roi_align/roi_align_params.h"

namespace maskrt
{
namespace roi_align
{

using namespace nvinfer1;

namespace
{
constexpr char const* kIntFields[] = {"output_height", "output_width", "sampling_ratio", "aligned", "canonical_level"};
} // namespace

// -- fields --------------------------------------------------------------------------------------------------------

std::vector<FieldSpec> RoIAlignOp::fieldTable()
{
    std::vector<FieldSpec> table;
    for (char const* name : kIntFields)
    {
        table.push_back({name, FieldKind::kInt32});
    }
    table.push_back({"spatial_scales", FieldKind::kFloat32List});
    table.push_back({"canonical_scale", FieldKind::kFloat32});
    table.push_back({"level_eps", FieldKind::kFloat32});
    return table;
}

std::string RoIAlignOp::fromFields(FieldValues const& v, Fields& f)
{
    f.params = roi_align::Params{v.getInt("output_height"), v.getInt("output_width"), v.getInt("sampling_ratio"),
        v.getInt("aligned"), v.getInt("canonical_level"), v.getFloat("canonical_scale"), v.getFloat("level_eps")};
    f.spatialScales = v.getFloats("spatial_scales");
    return checkParams(f.params, static_cast<int>(f.spatialScales.size()), f.spatialScales.data(), f.firstLevel);
}

void RoIAlignOp::toFields(Fields const& f, FieldValues& v)
{
    roi_align::Params const& p = f.params;
    int32_t const ints[] = {p.outHeight, p.outWidth, p.samplingRatio, p.aligned, p.canonicalLevel};
    for (size_t k = 0; k < sizeof(ints) / sizeof(ints[0]); ++k)
    {
        v.setInt(kIntFields[k], ints[k]);
    }
    v.setFloats("spatial_scales", f.spatialScales);
    v.setFloat("canonical_scale", p.canonicalScale);
    v.setFloat("level_eps", p.levelEps);
}

// -- plugin --------------------------------------------------------------------------------------------------------

std::string RoIAlignPlugin::checkShapes(Dims const* dims, int32_t nbInputs, int32_t nbOutputs) const
{
    int32_t const levels = static_cast<int32_t>(mParams.spatialScales.size());
    if (nbInputs != 1 + levels || nbOutputs != 1)
    {
        return "expects rois + " + std::to_string(levels) + " feature map(s) (one per spatial_scales value) and one "
            "output, got " + std::to_string(nbInputs) + " input(s) and " + std::to_string(nbOutputs) + " output(s)";
    }
    if (dims == nullptr)
    {
        return std::string();
    }
    Dims const& rois = dims[0];
    if (rois.nbDims != 3 || differ(rois.d[2], 4))
    {
        return "rois must be [B, R, 4], got " + describeDims(rois);
    }
    for (int32_t i = 1; i < nbInputs; ++i)
    {
        Dims const& f = dims[i];
        if (f.nbDims != 4 || differ(f.d[0], rois.d[0]) || differ(f.d[1], dims[1].d[1]))
        {
            return "feature map " + std::to_string(i - 1) + " must be [B, C, H, W] with the B of rois and the C of "
                "the first map, got " + describeDims(f) + " (rois " + describeDims(rois) + ")";
        }
    }
    return std::string();
}

void RoIAlignPlugin::outputTypes(DataType* outputs, DataType const* inputs) const
{
    outputs[0] = inputs[1]; // the features' type
}

std::string RoIAlignPlugin::outputShapes(
    DimsExprs const* inputs, int32_t nbInputs, DimsExprs* outputs, IExprBuilder& exprBuilder) const
{
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        if (inputs[i].nbDims != (i == 0 ? 3 : 4))
        {
            return "rois must have rank 3 [B, R, 4] and every feature map rank 4 [B, C, H, W]";
        }
    }
    outputs[0].nbDims = 5;
    outputs[0].d[0] = inputs[0].d[0];
    outputs[0].d[1] = inputs[0].d[1];
    outputs[0].d[2] = inputs[1].d[1];
    outputs[0].d[3] = exprBuilder.constant(mParams.params.outHeight);
    outputs[0].d[4] = exprBuilder.constant(mParams.params.outWidth);
    return std::string();
}

bool RoIAlignPlugin::supportsType(int32_t pos, DynamicPluginTensorDesc const* inOut) const
{
    DataType const type = inOut[pos].desc.type;
    switch (pos)
    {
    case 0: return type == DataType::kFLOAT;                           // rois
    case 1: return type == DataType::kFLOAT || type == DataType::kHALF; // the first feature map
    default: return type == inOut[1].desc.type;                         // the other maps and the output
    }
}

std::string RoIAlignPlugin::run(
    PluginTensorDesc const* inputDesc, void const* const* inputs, void* const* outputs, void*, cudaStream_t stream) const
{
    int32_t const nbLevels = static_cast<int32_t>(mParams.spatialScales.size());
    int64_t heights[kMaxLevels]{};
    int64_t widths[kMaxLevels]{};
    for (int32_t l = 0; l < nbLevels && l < kMaxLevels; ++l)
    {
        heights[l] = inputDesc[1 + l].dims.d[2];
        widths[l] = inputDesc[1 + l].dims.d[3];
    }
    Dims const& rois = inputDesc[0].dims;
    int64_t const channels = inputDesc[1].dims.d[1];
    int const dtype = inputDesc[1].type == DataType::kHALF ? 1 : 0;
    Levels levels;
    std::string const error = checkLaunch(mParams.params, nbLevels, mParams.spatialScales.data(), inputs + 1, heights,
        widths, rois.d[0], rois.d[1], channels, dtype, levels);
    if (!error.empty())
    {
        return error;
    }
    cudaError_t const status = launch(static_cast<float const*>(inputs[0]), levels, mParams.params, rois.d[0],
        rois.d[1], channels, static_cast<FeatureType>(dtype), outputs[0], stream);
    return status == cudaSuccess ? "" : std::string("kernel launch failed: ") + cudaGetErrorString(status);
}

} // namespace roi_align
} // namespace maskrt
