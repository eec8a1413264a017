// BatchedNMS as a TensorRT IPluginV3 (core + build + runtime) and its IPluginCreatorV3One. The shared plumbing is
// common/plugin_base.h; this file holds the op's fields, shape checks, types, formats, workspace and enqueue.
#pragma once

#include <NvInferRuntime.h>

#include <string>
#include <vector>

#include "common/plugin_base.h"
#include "nms/nms_core.h"

namespace maskrt
{
namespace nms
{

struct NMSOp
{
    static constexpr char const* kName = "BatchedNMS";
    static constexpr int32_t kNbOutputs = 2;
    using Params = nms::Params;
    static std::vector<FieldSpec> fieldTable();
    static std::string fromFields(FieldValues const& values, Params& params);
    static void toFields(Params const& params, FieldValues& values);
};

class NMSPlugin : public PluginBase<NMSPlugin, NMSOp>
{
public:
    using PluginBase::PluginBase;

    /// Three inputs (boxes, scores, groups), two outputs (keep, count); with dims: ranks and sizes agree. "" if valid.
    std::string checkShapes(nvinfer1::Dims const* dims, int32_t nbInputs, int32_t nbOutputs) const;

    void outputTypes(nvinfer1::DataType* outputs, nvinfer1::DataType const* inputs) const;
    std::string outputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs* outputs,
        nvinfer1::IExprBuilder& exprBuilder) const;
    bool supportsType(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut) const;
    /// Device workspace for the profile's largest batch and box count.
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    std::string run(nvinfer1::PluginTensorDesc const* inputDesc, void const* const* inputs, void* const* outputs,
        void* workspace, cudaStream_t stream) const;
};

using NMSPluginCreator = PluginCreator<NMSPlugin, NMSOp>;

} // namespace nms
} // namespace maskrt
