// The host (CPU) build of the plugin ops: extern "C" entry points for ctypes (plugins/roi_align/__init__.py,
// plugins/nms/__init__.py). Compiled by the C++ compiler alone; the math is the same headers the CUDA kernels use.
#include <sched.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "common/c_api.h"
#include "common/half.h"
#include "common/macros.h"
#include "nms/nms_core.h"
#include "nms/nms_params.h"
#include "roi_align/roi_align_core.h"
#include "roi_align/roi_align_params.h"

namespace
{

using maskrt::HalfBits;
namespace ra = maskrt::roi_align;

template <typename T>
struct PlaneAt;

template <>
struct PlaneAt<float>
{
    float const* plane;
    int64_t width;
    float operator()(int64_t y, int64_t x) const
    {
        return plane[y * width + x];
    }
};

template <>
struct PlaneAt<HalfBits>
{
    HalfBits const* plane;
    int64_t width;
    float operator()(int64_t y, int64_t x) const
    {
        return maskrt::halfToFloat(plane[y * width + x]);
    }
};

inline float scoreValue(float v)
{
    return v;
}

inline float scoreValue(HalfBits v)
{
    return maskrt::halfToFloat(v);
}

inline void store(float* out, float v)
{
    *out = v;
}

inline void store(HalfBits* out, float v)
{
    *out = maskrt::floatToHalf(v);
}

/// The threads a call with threads = 0 uses: every CPU this process may run on.
int hostThreads()
{
    cpu_set_t set;
    return sched_getaffinity(0, sizeof(set), &set) == 0 ? std::max(1, CPU_COUNT(&set))
                                                        : std::max(1u, std::thread::hardware_concurrency());
}

/// fn(begin, end) over [0, n) in contiguous chunks on up to `wanted` threads (0: hostThreads(); the caller's thread
/// included). Each index is handled by exactly one call, so results do not depend on the thread count.
template <typename Fn>
void parallelFor(int wanted, int64_t n, int64_t minChunk, Fn fn)
{
    int64_t const limit = wanted > 0 ? wanted : hostThreads();
    int64_t const threads = std::min<int64_t>(limit, std::max<int64_t>(1, n / std::max<int64_t>(1, minChunk)));
    if (threads <= 1)
    {
        fn(int64_t{0}, n);
        return;
    }
    std::vector<std::thread> pool;
    int64_t const chunk = (n + threads - 1) / threads;
    for (int64_t t = 1; t < threads; ++t)
    {
        int64_t const begin = std::min(n, t * chunk), end = std::min(n, begin + chunk);
        pool.emplace_back(fn, begin, end);
    }
    fn(int64_t{0}, std::min(n, chunk));
    for (auto& thread : pool)
    {
        thread.join();
    }
}

/// MultiLevelRoIAlign over the RoIs [first, last): per RoI, the taps of its sample rows and columns are computed once
/// (the CUDA kernel's tables) and every channel only loads and weighs them - binValue's arithmetic, in its order.
template <typename T>
void roiAlignRois(float const* rois, ra::Levels const& levels, ra::Params const& p, int64_t numRois, int64_t channels,
    T* out, int64_t first, int64_t last)
{
    int64_t const bins = static_cast<int64_t>(p.outHeight) * p.outWidth;
    std::vector<ra::AxisTap> ys;
    std::vector<ra::AxisTap> xs;
    for (int64_t roi = first; roi < last; ++roi)
    {
        int64_t const b = roi / numRois;
        ra::Geometry const g = ra::roiGeometry(rois + roi * 4, p, levels);
        T* o = out + roi * channels * bins;
        if (g.level < 0)
        {
            for (int64_t i = 0; i < channels * bins; ++i)
            {
                store(o + i, 0.f);
            }
            continue;
        }
        int64_t const h = levels.height[g.level];
        int64_t const w = levels.width[g.level];
        ys.resize(static_cast<size_t>(p.outHeight) * g.gridH);
        xs.resize(static_cast<size_t>(p.outWidth) * g.gridW);
        for (int ph = 0; ph < p.outHeight; ++ph)
        {
            for (int iy = 0; iy < g.gridH; ++iy)
            {
                ys[static_cast<size_t>(ph) * g.gridH + iy] = ra::axisTap(ra::sampleY(g, ph, iy), h);
            }
        }
        for (int pw = 0; pw < p.outWidth; ++pw)
        {
            for (int ix = 0; ix < g.gridW; ++ix)
            {
                xs[static_cast<size_t>(pw) * g.gridW + ix] = ra::axisTap(ra::sampleX(g, pw, ix), w);
            }
        }
        T const* base = static_cast<T const*>(levels.data[g.level]);
        for (int64_t c = 0; c < channels; ++c)
        {
            PlaneAt<T> const at{base + (b * channels + c) * h * w, w};
            T* oc = o + c * bins;
            for (int ph = 0; ph < p.outHeight; ++ph)
            {
                ra::AxisTap const* rowY = ys.data() + static_cast<size_t>(ph) * g.gridH;
                for (int pw = 0; pw < p.outWidth; ++pw)
                {
                    ra::AxisTap const* rowX = xs.data() + static_cast<size_t>(pw) * g.gridW;
                    float acc = 0.f;
                    for (int iy = 0; iy < g.gridH; ++iy)
                    {
                        for (int ix = 0; ix < g.gridW; ++ix)
                        {
                            acc += ra::interpolate(at, rowY[iy], rowX[ix]);
                        }
                    }
                    store(oc + ph * p.outWidth + pw, acc / g.count);
                }
            }
        }
    }
}

template <typename T>
void roiAlignHost(float const* rois, ra::Levels const& levels, ra::Params const& p, int64_t batch, int64_t numRois,
    int64_t channels, T* out, int threads)
{
    parallelFor(threads, batch * numRois, 8, [&](int64_t first, int64_t last) {
        roiAlignRois(rois, levels, p, numRois, channels, out, first, last);
    });
}

/// BatchedNMS of one image: filter by score, sort the candidates, greedy NMS (torchvision's CPU loop); writes
/// keep[0, kept) and returns kept. Reuses the caller's buffers across images.
template <typename S>
int nmsImage(float const* boxes, S const* scores, int32_t const* groups, int64_t numBoxes, maskrt::nms::Params const& p,
    int32_t* keep, std::vector<uint64_t>& keys, std::vector<float>& areas, std::vector<char>& suppressed)
{
    namespace nm = maskrt::nms;
    keys.clear();
    for (int64_t i = 0; i < numBoxes; ++i)
    {
        float const score = scoreValue(scores[i]);
        if (nm::isCandidate(score, p.scoreThreshold))
        {
            keys.push_back(nm::sortKey(score, static_cast<uint32_t>(i)));
        }
    }
    size_t const m = std::min(keys.size(), static_cast<size_t>(nm::kMaxCandidates));
    std::partial_sort(keys.begin(), keys.begin() + static_cast<std::ptrdiff_t>(m), keys.end());
    areas.resize(m);
    suppressed.assign(m, 0);
    for (size_t k = 0; k < m; ++k)
    {
        areas[k] = nm::boxArea(boxes + 4 * static_cast<int64_t>(nm::keyIndex(keys[k])));
    }
    int kept = 0;
    for (size_t a = 0; a < m && kept < p.maxOutputBoxes; ++a)
    {
        if (suppressed[a])
        {
            continue;
        }
        uint32_t const i = nm::keyIndex(keys[a]);
        keep[kept++] = static_cast<int32_t>(i);
        for (size_t c = a + 1; c < m; ++c)
        {
            uint32_t const j = nm::keyIndex(keys[c]);
            if (!suppressed[c] && groups[j] == groups[i]
                && nm::suppresses(boxes + 4 * int64_t{i}, areas[a], boxes + 4 * int64_t{j}, areas[c], p.iouThreshold))
            {
                suppressed[c] = 1;
            }
        }
    }
    return kept;
}

} // namespace

/// MultiLevelRoIAlign on the CPU. features[l] is a contiguous [batch, channels, heights[l], widths[l]] array of
/// fp32 (dtype 0) or fp16 bits (dtype 1); rois is [batch, numRois, 4] fp32; out is [batch, numRois, channels,
/// outHeight, outWidth] of the feature type; threads: how many it may use (0: every CPU this process may run on;
/// results do not depend on it). Returns 0, or -1 with a message in err.
MASKRT_EXPORT int maskrt_roi_align_host(float const* rois, void const* const* features, int64_t const* heights,
    int64_t const* widths, int numLevels, float const* scales, int64_t batch, int64_t numRois, int64_t channels,
    int outHeight, int outWidth, int samplingRatio, int aligned, int canonicalLevel, float canonicalScale,
    float levelEps, int dtype, void* out, int threads, char* err, int errLen)
{
    ra::Params const p{outHeight, outWidth, samplingRatio, aligned, canonicalLevel, canonicalScale, levelEps};
    ra::Levels levels;
    std::string const reason
        = ra::checkLaunch(p, numLevels, scales, features, heights, widths, batch, numRois, channels, dtype, levels);
    if (!reason.empty())
    {
        return maskrt::failWith(err, errLen, reason);
    }
    if (dtype == 0)
    {
        roiAlignHost(rois, levels, p, batch, numRois, channels, static_cast<float*>(out), threads);
    }
    else
    {
        roiAlignHost(rois, levels, p, batch, numRois, channels, static_cast<HalfBits*>(out), threads);
    }
    return 0;
}

/// BatchedNMS on the CPU. boxes is [batch, numBoxes, 4] fp32, scores [batch, numBoxes] fp32 (scoreType 0) or fp16
/// bits (1), groups [batch, numBoxes] int32; keep is [batch, maxOutputBoxes] int32 (-1 padded), count [batch] int32.
/// threads: as maskrt_roi_align_host's. Returns 0, or -1 with a message in err.
MASKRT_EXPORT int maskrt_nms_host(float const* boxes, void const* scores, int scoreType, int32_t const* groups,
    int64_t batch, int64_t numBoxes, float iouThreshold, float scoreThreshold, int maxOutputBoxes, int32_t* keep,
    int32_t* count, int threads, char* err, int errLen)
{
    namespace nm = maskrt::nms;
    nm::Params const p{iouThreshold, scoreThreshold, maxOutputBoxes};
    std::string const reason = nm::checkLaunch(p, batch, numBoxes, scoreType);
    if (!reason.empty())
    {
        return maskrt::failWith(err, errLen, reason);
    }
    parallelFor(threads, batch, 1, [&](int64_t first, int64_t last) {
    std::vector<uint64_t> keys;
    std::vector<float> areas;
    std::vector<char> suppressed;
    for (int64_t b = first; b < last; ++b)
    {
        int32_t* out = keep + b * maxOutputBoxes;
        float const* bx = boxes + b * numBoxes * 4;
        int32_t const* gr = groups + b * numBoxes;
        int const kept = scoreType == 0
            ? nmsImage(bx, static_cast<float const*>(scores) + b * numBoxes, gr, numBoxes, p, out, keys, areas,
                suppressed)
            : nmsImage(bx, static_cast<HalfBits const*>(scores) + b * numBoxes, gr, numBoxes, p, out, keys, areas,
                suppressed);
        std::fill(out + kept, out + maxOutputBoxes, -1);
        count[b] = kept;
    }
    });
    return 0;
}

/// The threads a host op given threads = 0 uses: every CPU this process may run on.
MASKRT_EXPORT int maskrt_host_threads()
{
    return hostThreads();
}

/// fp32 -> fp16 bits with the library's rounding (exposed for tests of the host conversion).
MASKRT_EXPORT void maskrt_float_to_half(float const* in, uint16_t* out, int64_t n)
{
    for (int64_t i = 0; i < n; ++i)
    {
        out[i] = maskrt::floatToHalf(in[i]).bits;
    }
}

/// fp16 bits -> fp32 (exposed for tests of the host conversion).
MASKRT_EXPORT void maskrt_half_to_float(uint16_t const* in, float* out, int64_t n)
{
    for (int64_t i = 0; i < n; ++i)
    {
        out[i] = maskrt::halfToFloat(HalfBits{in[i]});
    }
}
