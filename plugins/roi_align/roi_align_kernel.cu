// CUDA kernels of MultiLevelRoIAlign: fp32 and fp16 features, fp32 coordinate math and accumulation.
//
// Launch geometry: one block per (RoI, chunk of channels). The per-RoI and per-bin work is done once per block and
// reused across the chunk's channels:
//  1. thread 0 computes the RoI's level and sampling grid (roiGeometry) into shared memory;
//  2. the threads fill two small tables: for every sample row (out_h x grid_h) its two tap rows, as offsets into a
//     plane, and their weights; the same for the sample columns (out_w x grid_w) (roi_align_core.h axisTap);
//  3. each thread owns one output bin and walks the chunk's channels: per channel it only loads the bin's taps and
//     does the weighted sums (roi_align_core.h interpolate: the host build's expression, so both builds agree bit
//     for bit). Consecutive threads own consecutive bins of a channel: the output writes are coalesced and
//     neighbouring threads read neighbouring columns of the same plane.
// With sampling ratio 2 (Mask R-CNN) a thread keeps its bin's 4 samples in registers. RoIs whose tables would not fit
// (an adaptive grid on a huge RoI) or planes of 2^31 elements and more take the per-output path (binValue).
// Measured on an H100 and not kept (docs/plugins.md): one output row per warp with lanes on sample columns (2.1x
// slower: shuffles and idle lanes) and staging each RoI's patch in shared memory (6x slower: two barriers per few
// channels).
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
constexpr int kTargetOutputsPerBlock = 4096;
constexpr int kMaxTable = 256; // sample rows (out_h x grid_h) or columns held in shared memory

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

/// One table entry: an AxisTap with int32 taps; for sample rows, the taps are row offsets (row * W).
struct Tap
{
    int32_t low;
    int32_t high;
    float l;
    float h;
    bool valid;
};

__device__ __forceinline__ Tap toTap(AxisTap const& t, int64_t stride)
{
    return Tap{static_cast<int32_t>(t.low * stride), static_cast<int32_t>(t.high * stride), t.l, t.h, t.valid};
}

/// interpolate() on table taps (ty: row offsets, tx: columns): the same expression and order as the host build, so
/// the same bits.
template <typename T>
__device__ __forceinline__ float interpolateTaps(T const* plane, Tap const& ty, Tap const& tx)
{
    if (!(ty.valid && tx.valid))
    {
        return 0.f;
    }
    auto const at = [plane](int32_t row, int32_t x) { return DevicePlane<T>::toFloat(__ldg(plane + row + x)); };
    float const w1 = ty.h * tx.h;
    float const w2 = ty.h * tx.l;
    float const w3 = ty.l * tx.h;
    float const w4 = ty.l * tx.l;
    return w1 * at(ty.low, tx.low) + w2 * at(ty.low, tx.high) + w3 * at(ty.high, tx.low) + w4 * at(ty.high, tx.high);
}

__device__ __forceinline__ void store(float* out, float v)
{
    *out = v;
}

__device__ __forceinline__ void store(__half* out, float v)
{
    *out = __float2half_rn(v);
}

/// Output bin `bin` of channels c = first, first + step, ... < count: out[c * bins + bin]; channel c's plane starts
/// at planes + c * planeSize. kGrid > 0: the grid is kGrid x kGrid and the bin's taps live in registers; 0: any grid,
/// taps read from the tables.
template <int kGrid, typename T>
__device__ __forceinline__ void poolBin(T const* planes, int64_t planeSize, Geometry const& g, Tap const* ys,
    Tap const* xs, int outWidth, int bin, int first, int step, int count, int bins, T* o)
{
    int const ph = bin / outWidth;
    int const pw = bin - ph * outWidth;
    if constexpr (kGrid > 0)
    {
        Tap ty[kGrid];
        Tap tx[kGrid];
#pragma unroll
        for (int k = 0; k < kGrid; ++k)
        {
            ty[k] = ys[ph * kGrid + k];
            tx[k] = xs[pw * kGrid + k];
        }
        // Two channels' loads in flight: fp32 206 -> 156 us on the box case (H100).
#pragma unroll 2
        for (int c = first; c < count; c += step)
        {
            T const* plane = planes + c * planeSize;
            float acc = 0.f;
#pragma unroll
            for (int iy = 0; iy < kGrid; ++iy)
            {
#pragma unroll
                for (int ix = 0; ix < kGrid; ++ix)
                {
                    acc += interpolateTaps(plane, ty[iy], tx[ix]);
                }
            }
            store(o + static_cast<int64_t>(c) * bins + bin, acc / g.count);
        }
    }
    else
    {
        Tap const* rowY = ys + ph * g.gridH;
        Tap const* rowX = xs + pw * g.gridW;
        for (int c = first; c < count; c += step)
        {
            T const* plane = planes + c * planeSize;
            float acc = 0.f;
            for (int iy = 0; iy < g.gridH; ++iy)
            {
                Tap const ty = rowY[iy];
                for (int ix = 0; ix < g.gridW; ++ix)
                {
                    acc += interpolateTaps(plane, ty, rowX[ix]);
                }
            }
            store(o + static_cast<int64_t>(c) * bins + bin, acc / g.count);
        }
    }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) roiAlignKernel(float const* __restrict__ rois, Levels levels, Params p,
    int64_t numRois, int64_t channels, int channelsPerBlock, bool smallPlanes, T* __restrict__ out)
{
    __shared__ Geometry shared;
    __shared__ Tap ys[kMaxTable];
    __shared__ Tap xs[kMaxTable];
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
    int const chunk = static_cast<int>(min(static_cast<int64_t>(channelsPerBlock), channels - c0));
    int64_t const total = static_cast<int64_t>(chunk) * bins;
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
    int const rows = p.outHeight * g.gridH;
    int const cols = p.outWidth * g.gridW;
    if (!smallPlanes || rows > kMaxTable || cols > kMaxTable)
    {
        // The per-output path: every output computes its own samples.
        for (int64_t i = threadIdx.x; i < total; i += blockDim.x)
        {
            int64_t const c = i / bins;
            int const bin = static_cast<int>(i - c * bins);
            int const ph = bin / p.outWidth;
            int const pw = bin - ph * p.outWidth;
            DevicePlane<T> const at{base + c * h * w, w};
            store(o + i, binValue(at, h, w, g, ph, pw));
        }
        return;
    }
    for (int k = threadIdx.x; k < rows + cols; k += blockDim.x)
    {
        if (k < rows)
        {
            int const ph = k / g.gridH;
            ys[k] = toTap(axisTap(sampleY(g, ph, k - ph * g.gridH), h), w);
        }
        else
        {
            int const j = k - rows;
            int const pw = j / g.gridW;
            xs[j] = toTap(axisTap(sampleX(g, pw, j - pw * g.gridW), w), 1);
        }
    }
    __syncthreads();
    // Thread t owns bin t % bins of channels t / bins, + lanes, ... (with more bins than threads: bins t, t + threads,
    // ... of every channel).
    int const threads = static_cast<int>(blockDim.x);
    int const t = static_cast<int>(threadIdx.x);
    int const lanes = bins < threads ? threads / bins : 1;
    int const firstChannel = bins < threads ? t / bins : 0;
    if (firstChannel >= lanes)
    {
        return;
    }
    bool const grid2 = g.gridH == 2 && g.gridW == 2;
    for (int bin = bins < threads ? t % bins : t; bin < bins; bin += threads)
    {
        if (grid2)
        {
            poolBin<2>(base, h * w, g, ys, xs, p.outWidth, bin, firstChannel, lanes, chunk, bins, o);
        }
        else
        {
            poolBin<0>(base, h * w, g, ys, xs, p.outWidth, bin, firstChannel, lanes, chunk, bins, o);
        }
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
    // Chunks of about kTargetOutputsPerBlock outputs, balanced: 256 channels x 7x7 -> 4 chunks of 64 channels.
    int64_t chunks = (channels * bins + kTargetOutputsPerBlock - 1) / kTargetOutputsPerBlock;
    chunks = chunks < 1 ? 1 : (chunks > channels ? channels : chunks);
    chunks = chunks > 65535 ? 65535 : chunks;
    int64_t const perBlock = (channels + chunks - 1) / chunks;
    bool smallPlanes = true;
    for (int l = 0; l < levels.count; ++l)
    {
        smallPlanes = smallPlanes && levels.height[l] * levels.width[l] < 0x7fffffffLL;
    }
    dim3 const grid(static_cast<unsigned>(totalRois), static_cast<unsigned>((channels + perBlock - 1) / perBlock));
    if (type == FeatureType::kFLOAT)
    {
        roiAlignKernel<float><<<grid, kThreads, 0, stream>>>(rois, levels, p, numRois, channels,
            static_cast<int>(perBlock), smallPlanes, static_cast<float*>(out));
    }
    else
    {
        roiAlignKernel<__half><<<grid, kThreads, 0, stream>>>(rois, levels, p, numRois, channels,
            static_cast<int>(perBlock), smallPlanes, static_cast<__half*>(out));
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
