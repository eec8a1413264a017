// MultiLevelRoIAlign as a TensorRT IPluginV3 (core + build + runtime) and its IPluginCreatorV3One. The shared
// plumbing is common/plugin_base.h; this file holds the op's fields, shape checks, types, formats and enqueue.
#pragma once

#include <NvInferRuntime.h>

#include <string>
#include <vector>

#include "common/plugin_base.h"
#include "roi_align/roi_align_core.h"

namespace maskrt
{
namespace roi_align
{

/// The validated plugin fields.
struct Fields
{
    Params params{};
    std::vector<float> spatialScales;
    int firstLevel{0};
};

struct RoIAlignOp
{
    static constexpr char const* kName = "MultiLevelRoIAlign";
    static constexpr int32_t kNbOutputs = 1;
    using Params = Fields;
    static std::vector<FieldSpec> fieldTable();
    static std::string fromFields(FieldValues const& values, Fields& fields);
    static void toFields(Fields const& fields, FieldValues& values);
};

class RoIAlignPlugin : public PluginBase<RoIAlignPlugin, RoIAlignOp>
{
public:
    using PluginBase::PluginBase;

    /// Input count = rois + one map per scale, one output; with dims: ranks, B and C agree. "" when valid.
    std::string checkShapes(nvinfer1::Dims const* dims, int32_t nbInputs, int32_t nbOutputs) const;

    void outputTypes(nvinfer1::DataType* outputs, nvinfer1::DataType const* inputs) const;
    std::string outputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs* outputs,
        nvinfer1::IExprBuilder& exprBuilder) const;
    bool supportsType(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut) const;
    std::string run(nvinfer1::PluginTensorDesc const* inputDesc, void const* const* inputs, void* const* outputs,
        void* workspace, cudaStream_t stream) const;
};

using RoIAlignPluginCreator = PluginCreator<RoIAlignPlugin, RoIAlignOp>;

} // namespace roi_align
} // namespace maskrt
