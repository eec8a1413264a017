// CUDA launch of MultiLevelRoIAlign (used by the plugin's enqueue and by the extern "C" launcher for Python).
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "roi_align_core.h"

namespace maskrt
{
namespace roi_align
{

enum class FeatureType : int
{
    kFLOAT = 0,
    kHALF = 1,
};

/// Launches the kernel on `stream`; levels hold device pointers. Returns the launch status.
cudaError_t launch(float const* rois, Levels const& levels, Params const& p, int64_t batch, int64_t numRois,
    int64_t channels, FeatureType type, void* out, cudaStream_t stream);

} // namespace roi_align
} // namespace maskrt
