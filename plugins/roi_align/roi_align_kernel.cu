// CUDA kernels of MultiLevelRoIAlign: fp32 and fp16 features, fp32 coordinate math and accumulation.
//
// Launch geometry: one block per (RoI, chunk of channels). Thread 0 computes the RoI's level and sampling grid once
// into shared memory; the block's threads then walk the chunk's [channels, out_h, out_w] outputs in memory order, so
// the output writes are fully coalesced and neighbouring threads sample neighbouring columns of the same feature
// plane (shared cache lines). A chunk holds about kTargetOutputsPerBlock outputs, which keeps thousands of blocks
// in flight for typical RoI counts (e.g. 1000 RoIs x 256 channels x 7x7 -> 13000 blocks).
#include <cuda_fp16.h>

#include <string>

#include "common/c_api.h"
#include "common/macros.h"
#include "roi_align/roi_align_kernel.h"
#include "roi_align/roi_align_params.h"

namespace maskrt
{
namespace roi_align
{
namespace
{

constexpr int kThreads = 256;
constexpr int kTargetOutputsPerBlock = 1024;

template <typename T>
struct DevicePlane
{
    T const* plane;
    int64_t width;
    __device__ __forceinline__ float operator()(int64_t y, int64_t x) const
    {
        return toFloat(__ldg(plane + y * width + x));
    }
    __device__ __forceinline__ static float toFloat(float v)
    {
        return v;
    }
    __device__ __forceinline__ static float toFloat(__half v)
    {
        return __half2float(v);
    }
};

__device__ __forceinline__ void store(float* out, float v)
{
    *out = v;
}

__device__ __forceinline__ void store(__half* out, float v)
{
    *out = __float2half_rn(v);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) roiAlignKernel(float const* __restrict__ rois, Levels levels, Params p,
    int64_t numRois, int64_t channels, int channelsPerBlock, T* __restrict__ out)
{
    __shared__ Geometry shared;
    int64_t const roi = blockIdx.x;
    if (threadIdx.x == 0)
    {
        shared = roiGeometry(rois + roi * 4, p, levels);
    }
    __syncthreads();
    Geometry const g = shared;

    int64_t const b = roi / numRois;
    int const bins = p.outHeight * p.outWidth;
    int64_t const c0 = static_cast<int64_t>(blockIdx.y) * channelsPerBlock;
    int64_t const chunk = min(static_cast<int64_t>(channelsPerBlock), channels - c0);
    int64_t const total = chunk * bins;
    T* o = out + (roi * channels + c0) * bins;
    if (g.level < 0)
    {
        for (int64_t i = threadIdx.x; i < total; i += blockDim.x)
        {
            store(o + i, 0.f);
        }
        return;
    }
    int64_t const h = levels.height[g.level];
    int64_t const w = levels.width[g.level];
    T const* base = static_cast<T const*>(levels.data[g.level]) + (b * channels + c0) * h * w;
    for (int64_t i = threadIdx.x; i < total; i += blockDim.x)
    {
        int64_t const c = i / bins;
        int const bin = static_cast<int>(i - c * bins);
        int const ph = bin / p.outWidth;
        int const pw = bin - ph * p.outWidth;
        DevicePlane<T> const at{base + c * h * w, w};
        store(o + i, binValue(at, h, w, g, ph, pw));
    }
}

} // namespace

cudaError_t launch(float const* rois, Levels const& levels, Params const& p, int64_t batch, int64_t numRois,
    int64_t channels, FeatureType type, void* out, cudaStream_t stream)
{
    int64_t const totalRois = batch * numRois;
    if (totalRois == 0 || channels == 0)
    {
        return cudaSuccess;
    }
    if (totalRois > 0x7fffffffLL)
    {
        return cudaErrorInvalidConfiguration;
    }
    int const bins = p.outHeight * p.outWidth;
    int64_t perBlock = kTargetOutputsPerBlock / bins;
    perBlock = perBlock < 1 ? 1 : (perBlock > channels ? channels : perBlock);
    int64_t const chunks = (channels + perBlock - 1) / perBlock;
    if (chunks > 65535)
    {
        perBlock = (channels + 65534) / 65535;
    }
    dim3 const grid(static_cast<unsigned>(totalRois), static_cast<unsigned>((channels + perBlock - 1) / perBlock));
    if (type == FeatureType::kFLOAT)
    {
        roiAlignKernel<float><<<grid, kThreads, 0, stream>>>(
            rois, levels, p, numRois, channels, static_cast<int>(perBlock), static_cast<float*>(out));
    }
    else
    {
        roiAlignKernel<__half><<<grid, kThreads, 0, stream>>>(
            rois, levels, p, numRois, channels, static_cast<int>(perBlock), static_cast<__half*>(out));
    }
    return cudaGetLastError();
}

} // namespace roi_align
} // namespace maskrt

/// MultiLevelRoIAlign on the GPU, for callers without TensorRT (tests, benchmarks). Same arguments as
/// maskrt_roi_align_host in host_api.cpp, but all tensor pointers are device pointers and the kernel is enqueued on
/// `stream` (a cudaStream_t, may be null). Returns 0, -1 for invalid arguments (message in err), or a positive
/// cudaError_t.
MASKRT_EXPORT int maskrt_roi_align_cuda(float const* rois, void const* const* features, int64_t const* heights,
    int64_t const* widths, int numLevels, float const* scales, int64_t batch, int64_t numRois, int64_t channels,
    int outHeight, int outWidth, int samplingRatio, int aligned, int canonicalLevel, float canonicalScale,
    float levelEps, int dtype, void* out, void* stream, char* err, int errLen)
{
    namespace ra = maskrt::roi_align;
    ra::Params const p{outHeight, outWidth, samplingRatio, aligned, canonicalLevel, canonicalScale, levelEps};
    ra::Levels levels;
    std::string const reason
        = ra::checkLaunch(p, numLevels, scales, features, heights, widths, batch, numRois, channels, dtype, levels);
    if (!reason.empty())
    {
        return maskrt::failWith(err, errLen, reason);
    }
    cudaError_t const status = ra::launch(rois, levels, p, batch, numRois, channels, static_cast<ra::FeatureType>(dtype),
        out, static_cast<cudaStream_t>(stream));
    return status == cudaSuccess ? 0 : static_cast<int>(status);
}
