// CUDA launch of BatchedNMS (used by the plugin's enqueue and by the extern "C" launcher for Python).
#pragma once

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#include "nms_core.h"

namespace maskrt
{
namespace nms
{

enum class ScoreType : int
{
    kFLOAT = 0,
    kHALF = 1,
};

/// Bytes of device workspace `launch` needs for `batch` images of `numBoxes` boxes (plain host arithmetic, no CUDA
/// call: TensorRT asks for it at build time, also on machines without a GPU).
size_t workspaceSize(int64_t batch, int64_t numBoxes);

/// Enqueues the NMS on `stream`; all pointers are device pointers, `workspace` holds workspaceSize(batch, numBoxes)
/// bytes (256-byte aligned). keep is [batch, p.maxOutputBoxes], count [batch]. Returns the launch status.
cudaError_t launch(float const* boxes, void const* scores, ScoreType scoreType, int32_t const* groups, int64_t batch,
    int64_t numBoxes, Params const& p, int32_t* keep, int32_t* count, void* workspace, cudaStream_t stream);

} // namespace nms
} // namespace maskrt
