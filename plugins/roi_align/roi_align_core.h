// MultiLevelRoIAlign kernel core: written once, compiled as CUDA device code (roi_align_kernel.cu) and as plain
// C++ (host_api.cpp). Semantics = torchvision.ops.roi_align / MultiScaleRoIAlign, see docs/architecture.md section 4.
//
// Defined beyond torchvision (so that no RoI can make the kernel read out of bounds or loop forever):
//  * an RoI with a non-finite coordinate (NaN, +-inf), or whose scaled size overflows, yields zeros;
//  * with several levels, an RoI whose level is NaN (negative area: x2 < x1 xor y2 < y1) yields zeros; torchvision
//    assigns it to no level, which gives the same zeros;
//  * the adaptive grid (sampling_ratio <= 0) is capped at kMaxAdaptiveGrid samples per bin side;
//  * an empty feature map (H or W == 0) yields zeros.
// All coordinate math and accumulation is fp32, whatever the feature type.
#pragma once

#include <stdint.h>

#include "../common/macros.h"

#if !defined(__CUDACC__)
#include <math.h>
#endif

namespace maskrt
{
namespace roi_align
{

constexpr int kMaxLevels = 8;
constexpr int kMaxAdaptiveGrid = 1024;

/// Operator attributes (the plugin fields), already validated.
struct Params
{
    int outHeight;
    int outWidth;
    int samplingRatio; // <= 0: adaptive, ceil(roi_size / output_size)
    int aligned;       // 0 or 1
    int canonicalLevel;
    float canonicalScale;
    float levelEps;
};

/// The feature pyramid of one call: level i has spatial scale scale[i] = 2^-(firstLevel + i).
struct Levels
{
    int count;
    int firstLevel; // k_min of torchvision's LevelMapper
    void const* data[kMaxLevels];
    int64_t height[kMaxLevels];
    int64_t width[kMaxLevels];
    float scale[kMaxLevels];
};

/// Everything about one RoI that does not depend on the channel or the output bin.
struct Geometry
{
    int level; // index into Levels, or -1: the RoI's output is all zeros
    float startY;
    float startX;
    float binH;
    float binW;
    int gridH;
    int gridW;
    float count;
};

MASKRT_HD bool isFinite(float v)
{
#if defined(__CUDA_ARCH__)
    return isfinite(v);
#else
    return isfinite(v) != 0;
#endif
}

/// torchvision LevelMapper: floor(k0 + log2(sqrt(area) / s0) + eps), clamped; -1 when the level is NaN.
MASKRT_HD int mapLevel(float x1, float y1, float x2, float y2, Params const& p, Levels const& levels)
{
    float const area = (x2 - x1) * (y2 - y1);
    float t = static_cast<float>(p.canonicalLevel) + log2f(sqrtf(area) / p.canonicalScale);
    t = t + p.levelEps;
    float k = floorf(t);
    if (!(k == k))
    {
        return -1;
    }
    float const kMin = static_cast<float>(levels.firstLevel);
    float const kMax = static_cast<float>(levels.firstLevel + levels.count - 1);
    k = k < kMin ? kMin : (k > kMax ? kMax : k);
    return static_cast<int>(k) - levels.firstLevel;
}

/// RoI coordinates on its level and the sampling grid (torchvision roi_align_forward_kernel_impl).
MASKRT_HD Geometry roiGeometry(float const* box, Params const& p, Levels const& levels)
{
    Geometry g{-1, 0.f, 0.f, 0.f, 0.f, 0, 0, 1.f};
    float const x1 = box[0];
    float const y1 = box[1];
    float const x2 = box[2];
    float const y2 = box[3];
    if (!(isFinite(x1) && isFinite(y1) && isFinite(x2) && isFinite(y2)) || levels.count < 1)
    {
        return g;
    }
    int const level = levels.count > 1 ? mapLevel(x1, y1, x2, y2, p, levels) : 0;
    if (level < 0 || levels.height[level] <= 0 || levels.width[level] <= 0)
    {
        return g;
    }
    float const scale = levels.scale[level];
    float const offset = p.aligned ? 0.5f : 0.0f;
    float const startX = x1 * scale - offset;
    float const startY = y1 * scale - offset;
    float const endX = x2 * scale - offset;
    float const endY = y2 * scale - offset;
    float roiW = endX - startX;
    float roiH = endY - startY;
    if (!p.aligned)
    {
        roiW = roiW > 1.f ? roiW : 1.f;
        roiH = roiH > 1.f ? roiH : 1.f;
    }
    if (!(isFinite(startX) && isFinite(startY) && isFinite(roiW) && isFinite(roiH)))
    {
        return g;
    }
    g.binH = roiH / static_cast<float>(p.outHeight);
    g.binW = roiW / static_cast<float>(p.outWidth);
    if (p.samplingRatio > 0)
    {
        g.gridH = p.samplingRatio;
        g.gridW = p.samplingRatio;
    }
    else
    {
        // ceil(size / pooled); <= 0 (negative aligned size) means no sample and a zero output, as in torchvision.
        float const gh = ceilf(roiH / static_cast<float>(p.outHeight));
        float const gw = ceilf(roiW / static_cast<float>(p.outWidth));
        float const cap = static_cast<float>(kMaxAdaptiveGrid);
        g.gridH = gh <= 0.f ? 0 : static_cast<int>(gh < cap ? gh : cap);
        g.gridW = gw <= 0.f ? 0 : static_cast<int>(gw < cap ? gw : cap);
    }
    int const n = g.gridH * g.gridW;
    g.count = static_cast<float>(n > 1 ? n : 1);
    g.startX = startX;
    g.startY = startY;
    g.level = level;
    return g;
}

/// The two taps of one sample coordinate along one axis of a plane of `size` elements, and their weights.
struct AxisTap
{
    int64_t low;
    int64_t high;
    float l;    // weight of `high`
    float h;    // weight of `low` (1 - l)
    bool valid; // false: the sample lies outside [-1, size] (or is NaN) and contributes 0
};

/// torchvision's bilinear_interpolate, one axis: clamp to the plane, split into low/high taps and weights.
MASKRT_HD AxisTap axisTap(float v, int64_t size)
{
    AxisTap t{0, 0, 0.f, 1.f, false};
    // Written as a negation so that NaN samples are rejected too.
    if (!(v >= -1.0f && v <= static_cast<float>(size)))
    {
        return t;
    }
    t.valid = true;
    if (v <= 0.f)
    {
        v = 0.f;
    }
    t.low = static_cast<int64_t>(v);
    if (t.low >= size - 1)
    {
        t.high = t.low = size - 1;
        v = static_cast<float>(t.low);
    }
    else
    {
        t.high = t.low + 1;
    }
    t.l = v - static_cast<float>(t.low);
    t.h = 1.f - t.l;
    return t;
}

/// The bilinear sample at taps (ty, tx): `at(y, x)` returns the float value of element (y, x). The products and sums
/// are torchvision's, in its order; every build (host, CUDA) evaluates this one expression.
template <typename At>
MASKRT_HD float interpolate(At const& at, AxisTap const& ty, AxisTap const& tx)
{
    if (!(ty.valid && tx.valid))
    {
        return 0.f;
    }
    float const w1 = ty.h * tx.h;
    float const w2 = ty.h * tx.l;
    float const w3 = ty.l * tx.h;
    float const w4 = ty.l * tx.l;
    return w1 * at(ty.low, tx.low) + w2 * at(ty.low, tx.high) + w3 * at(ty.high, tx.low) + w4 * at(ty.high, tx.high);
}

/// Sample coordinate iy (of gridH) of output row ph, on the RoI's level (y; the x axis is the same with W).
MASKRT_HD float sampleY(Geometry const& g, int ph, int iy)
{
    return g.startY + static_cast<float>(ph) * g.binH
        + (static_cast<float>(iy) + .5f) * g.binH / static_cast<float>(g.gridH);
}

MASKRT_HD float sampleX(Geometry const& g, int pw, int ix)
{
    return g.startX + static_cast<float>(pw) * g.binW
        + (static_cast<float>(ix) + .5f) * g.binW / static_cast<float>(g.gridW);
}

/// One bilinear sample of a [H, W] plane at (y, x).
template <typename At>
MASKRT_HD float bilinear(At const& at, int64_t height, int64_t width, float y, float x)
{
    return interpolate(at, axisTap(y, height), axisTap(x, width));
}

/// Average of the grid samples of output bin (ph, pw) on one channel plane.
template <typename At>
MASKRT_HD float binValue(At const& at, int64_t height, int64_t width, Geometry const& g, int ph, int pw)
{
    float acc = 0.f;
    for (int iy = 0; iy < g.gridH; ++iy)
    {
        AxisTap const ty = axisTap(sampleY(g, ph, iy), height);
        for (int ix = 0; ix < g.gridW; ++ix)
        {
            acc += interpolate(at, ty, axisTap(sampleX(g, pw, ix), width));
        }
    }
    return acc / g.count;
}

} // namespace roi_align
} // namespace maskrt
