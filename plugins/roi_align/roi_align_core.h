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

/// One bilinear sample of a [H, W] plane; `at(y, x)` returns the float value of element (y, x).
template <typename At>
MASKRT_HD float bilinear(At const& at, int64_t height, int64_t width, float y, float x)
{
    // Written as a negation so that NaN samples are rejected too.
    if (!(y >= -1.0f && y <= static_cast<float>(height) && x >= -1.0f && x <= static_cast<float>(width)))
    {
        return 0.f;
    }
    if (y <= 0.f)
    {
        y = 0.f;
    }
    if (x <= 0.f)
    {
        x = 0.f;
    }
    int64_t yLow = static_cast<int64_t>(y);
    int64_t xLow = static_cast<int64_t>(x);
    int64_t yHigh;
    int64_t xHigh;
    if (yLow >= height - 1)
    {
        yHigh = yLow = height - 1;
        y = static_cast<float>(yLow);
    }
    else
    {
        yHigh = yLow + 1;
    }
    if (xLow >= width - 1)
    {
        xHigh = xLow = width - 1;
        x = static_cast<float>(xLow);
    }
    else
    {
        xHigh = xLow + 1;
    }
    float const ly = y - static_cast<float>(yLow);
    float const lx = x - static_cast<float>(xLow);
    float const hy = 1.f - ly;
    float const hx = 1.f - lx;
    float const w1 = hy * hx;
    float const w2 = hy * lx;
    float const w3 = ly * hx;
    float const w4 = ly * lx;
    return w1 * at(yLow, xLow) + w2 * at(yLow, xHigh) + w3 * at(yHigh, xLow) + w4 * at(yHigh, xHigh);
}

/// Average of the grid samples of output bin (ph, pw) on one channel plane.
template <typename At>
MASKRT_HD float binValue(At const& at, int64_t height, int64_t width, Geometry const& g, int ph, int pw)
{
    float acc = 0.f;
    for (int iy = 0; iy < g.gridH; ++iy)
    {
        float const y = g.startY + static_cast<float>(ph) * g.binH
            + (static_cast<float>(iy) + .5f) * g.binH / static_cast<float>(g.gridH);
        for (int ix = 0; ix < g.gridW; ++ix)
        {
            float const x = g.startX + static_cast<float>(pw) * g.binW
                + (static_cast<float>(ix) + .5f) * g.binW / static_cast<float>(g.gridW);
            acc += bilinear(at, height, width, y, x);
        }
    }
    return acc / g.count;
}

} // namespace roi_align
} // namespace maskrt
