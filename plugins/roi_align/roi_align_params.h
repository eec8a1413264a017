// Host-side validation shared by the plugin creator, the CUDA launcher and the CPU library, so that every entry
// point accepts and rejects exactly the same attributes.
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

} // namespace roi_align
} // namespace maskrt
