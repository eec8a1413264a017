// Entry points of the maskrt plugin library (libmaskrt_plugins.so), found by IPluginRegistry::loadLibrary and
// `trtexec --dynamicPlugins`. The library never calls into the plugin registry itself (no REGISTER_TENSORRT_PLUGIN):
// TensorRT asks for the creators through getCreators. Where a library is only dlopen()ed (Triton's
// `--backend-config=tensorrt,plugins=`), libmaskrt_triton.so registers these creators (triton/triton_register.cpp).
//
// To add an op: construct its IPluginCreatorV3One below, next to the others.
#include <NvInferRuntime.h>

#include "common/logging.h"
#include "common/macros.h"
#include "nms/nms_plugin.h"
#include "roi_align/roi_align_plugin.h"

namespace
{

nvinfer1::IPluginCreatorInterface* const* creators(int32_t& count)
{
    static maskrt::roi_align::RoIAlignPluginCreator roiAlign;
    static maskrt::nms::NMSPluginCreator batchedNms;
    static nvinfer1::IPluginCreatorInterface* const list[] = {&roiAlign, &batchedNms};
    count = static_cast<int32_t>(sizeof(list) / sizeof(list[0]));
    return list;
}

} // namespace

MASKRT_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    maskrt::setLoggerFinder(finder);
}

MASKRT_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    return creators(nbCreators);
}
