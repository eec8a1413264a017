// Host-side validation shared by the plugin creator, the CUDA launcher and the CPU library, so that every entry
// point accepts and rejects exactly the same attributes.
#pragma once

#include <cmath>
#include <string>

#include "nms_core.h"

namespace maskrt
{
namespace nms
{

/// Checks the attributes; returns an empty string when valid, else a one-line reason.
inline std::string checkParams(Params const& p)
{
    if (!(p.iouThreshold >= 0.f && p.iouThreshold <= 1.f))
    {
        return "iou_threshold must be in [0, 1], got " + std::to_string(p.iouThreshold);
    }
    if (!std::isfinite(p.scoreThreshold))
    {
        return "score_threshold must be finite";
    }
    if (p.maxOutputBoxes < 0)
    {
        return "max_output_boxes must be >= 0, got " + std::to_string(p.maxOutputBoxes);
    }
    return std::string();
}

} // namespace nms
} // namespace maskrt
