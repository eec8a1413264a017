#include "nms/nms_plugin.h"

#include "common/logging.h"
#include "nms/nms_kernel.h"
#include "nms/nms_params.h"

namespace maskrt
{
namespace nms
{

using namespace nvinfer1;

// -- fields --------------------------------------------------------------------------------------------------------

std::vector<FieldSpec> NMSOp::fieldTable()
{
    return {{"iou_threshold", FieldKind::kFloat32}, {"score_threshold", FieldKind::kFloat32},
        {"max_output_boxes", FieldKind::kInt32}};
}

std::string NMSOp::fromFields(FieldValues const& v, Params& p)
{
    p = Params{v.getFloat("iou_threshold"), v.getFloat("score_threshold"), v.getInt("max_output_boxes")};
    return checkParams(p);
}

void NMSOp::toFields(Params const& p, FieldValues& v)
{
    v.setFloat("iou_threshold", p.iouThreshold);
    v.setFloat("score_threshold", p.scoreThreshold);
    v.setInt("max_output_boxes", p.maxOutputBoxes);
}

// -- plugin --------------------------------------------------------------------------------------------------------

std::string NMSPlugin::checkShapes(Dims const* dims, int32_t nbInputs, int32_t nbOutputs) const
{
    if (nbInputs != 3 || nbOutputs != 2)
    {
        return "expects 3 inputs (boxes, scores, groups) and 2 outputs (keep, count), got " + std::to_string(nbInputs)
            + " input(s) and " + std::to_string(nbOutputs) + " output(s)";
    }
    if (dims == nullptr)
    {
        return std::string();
    }
    Dims const& boxes = dims[0];
    Dims const& scores = dims[1];
    Dims const& groups = dims[2];
    if (boxes.nbDims != 3 || differ(boxes.d[2], 4))
    {
        return "boxes must be [B, N, 4], got " + describeDims(boxes);
    }
    if (scores.nbDims != 2 || differ(scores.d[0], boxes.d[0]) || differ(scores.d[1], boxes.d[1]))
    {
        return "scores must be [B, N] like boxes " + describeDims(boxes) + ", got " + describeDims(scores);
    }
    if (groups.nbDims != 2 || differ(groups.d[0], boxes.d[0]) || differ(groups.d[1], boxes.d[1]))
    {
        return "groups must be [B, N] like boxes " + describeDims(boxes) + ", got " + describeDims(groups);
    }
    return checkSizes(boxes.d[0] < 0 ? 0 : boxes.d[0], boxes.d[1] < 0 ? 0 : boxes.d[1]);
}

void NMSPlugin::outputTypes(DataType* outputs, DataType const*) const
{
    outputs[0] = DataType::kINT32; // keep
    outputs[1] = DataType::kINT32; // count
}

std::string NMSPlugin::outputShapes(DimsExprs const* inputs, int32_t, DimsExprs* outputs, IExprBuilder& exprBuilder)
    const
{
    if (inputs[0].nbDims != 3 || inputs[1].nbDims != 2 || inputs[2].nbDims != 2)
    {
        return "boxes must have rank 3 [B, N, 4], scores and groups rank 2 [B, N]";
    }
    outputs[0].nbDims = 2;
    outputs[0].d[0] = inputs[0].d[0];
    outputs[0].d[1] = exprBuilder.constant(mParams.maxOutputBoxes);
    outputs[1].nbDims = 1;
    outputs[1].d[0] = inputs[0].d[0];
    return std::string();
}

bool NMSPlugin::supportsType(int32_t pos, DynamicPluginTensorDesc const* inOut) const
{
    DataType const type = inOut[pos].desc.type;
    switch (pos)
    {
    case 0: return type == DataType::kFLOAT;                           // boxes
    case 1: return type == DataType::kFLOAT || type == DataType::kHALF; // scores
    default: return type == DataType::kINT32;                          // groups, keep, count
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

std::string NMSPlugin::run(
    PluginTensorDesc const* inputDesc, void const* const* inputs, void* const* outputs, void* workspace,
    cudaStream_t stream) const
{
    Dims const& boxes = inputDesc[0].dims;
    int const scoreType = inputDesc[1].type == DataType::kHALF ? 1 : 0;
    std::string const error = checkLaunch(mParams, boxes.d[0], boxes.d[1], scoreType);
    if (!error.empty())
    {
        return error;
    }
    cudaError_t const status = launch(static_cast<float const*>(inputs[0]), inputs[1], static_cast<ScoreType>(scoreType),
        static_cast<int32_t const*>(inputs[2]), boxes.d[0], boxes.d[1], mParams, static_cast<int32_t*>(outputs[0]),
        static_cast<int32_t*>(outputs[1]), workspace, stream);
    return status == cudaSuccess ? "" : std::string("kernel launch failed: ") + cudaGetErrorString(status);
}

} // namespace nms
} // namespace maskrt
