// Host-side validation shared by the plugin (creator and enqueue), the CUDA launcher and the CPU library, so that every
// entry point accepts and rejects exactly the same attributes and tensors.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "roi_align_core.h"

namespace maskrt
{
namespace roi_align
{

/// Level l of a spatial scale 2^-l, or false when the scale is not a finite positive power of two.
inline bool scaleToLevel(float scale, int& level)
{
    if (!(scale > 0.f) || !std::isfinite(scale))
    {
        return false;
    }
    int exponent = 0;
    float const mantissa = std::frexp(scale, &exponent); // scale = mantissa * 2^exponent, mantissa in [0.5, 1)
    if (mantissa != 0.5f)
    {
        return false;
    }
    level = 1 - exponent;
    return true;
}

/// Checks the attributes; returns an empty string when valid, else a one-line reason. Sets levels.firstLevel.
inline std::string checkParams(Params const& p, int numScales, float const* scales, int& firstLevel)
{
    if (p.outHeight <= 0 || p.outWidth <= 0)
    {
        return "output_height and output_width must be positive, got " + std::to_string(p.outHeight) + " x "
            + std::to_string(p.outWidth);
    }
    if (p.aligned != 0 && p.aligned != 1)
    {
        return "aligned must be 0 or 1, got " + std::to_string(p.aligned);
    }
    if (!(p.canonicalScale > 0.f) || !std::isfinite(p.canonicalScale))
    {
        return "canonical_scale must be a positive finite number";
    }
    if (!std::isfinite(p.levelEps))
    {
        return "level_eps must be finite";
    }
    if (numScales < 1 || numScales > kMaxLevels)
    {
        return "spatial_scales must hold 1 to " + std::to_string(kMaxLevels) + " values, got "
            + std::to_string(numScales);
    }
    for (int i = 0; i < numScales; ++i)
    {
        int level = 0;
        if (!scaleToLevel(scales[i], level))
        {
            return "spatial_scales[" + std::to_string(i) + "] = " + std::to_string(scales[i])
                + " is not a power of two";
        }
        if (i == 0)
        {
            firstLevel = level;
        }
        else if (level != firstLevel + i)
        {
            return "spatial_scales must be consecutive pyramid levels, finest first (each half the previous one)";
        }
    }
    return std::string();
}

/// The one launch-argument check of every entry point (plugin enqueue, CUDA launcher, host library): attributes,
/// sizes and feature maps (data[l], heights[l], widths[l] of each level; dtype 0 = fp32, 1 = fp16). Fills `levels`
/// and returns an empty string when valid, else a one-line reason.
inline std::string checkLaunch(Params const& p, int numLevels, float const* scales, void const* const* data,
    int64_t const* heights, int64_t const* widths, int64_t batch, int64_t numRois, int64_t channels, int dtype,
    Levels& levels)
{
    levels = Levels{};
    std::string const reason = checkParams(p, numLevels, scales, levels.firstLevel);
    if (!reason.empty())
    {
        return reason;
    }
    if (batch < 0 || numRois < 0 || channels < 0)
    {
        return "negative size: batch " + std::to_string(batch) + ", rois " + std::to_string(numRois) + ", channels "
            + std::to_string(channels);
    }
    if (dtype != 0 && dtype != 1)
    {
        return "unknown feature dtype " + std::to_string(dtype) + " (0 = fp32, 1 = fp16)";
    }
    levels.count = numLevels;
    for (int l = 0; l < numLevels; ++l)
    {
        if (heights[l] < 0 || widths[l] < 0 || (data[l] == nullptr && batch * channels * heights[l] * widths[l] > 0))
        {
            return "invalid feature map " + std::to_string(l) + " (" + std::to_string(heights[l]) + " x "
                + std::to_string(widths[l]) + (data[l] == nullptr ? ", no data)" : ")");
        }
        levels.data[l] = data[l];
        levels.height[l] = heights[l];
        levels.width[l] = widths[l];
        levels.scale[l] = scales[l];
    }
    return std::string();
}

} // namespace roi_align
} // namespace maskrt
