// Host-side validation shared by the plugin (creator, shape checks), the CUDA launcher and the CPU library, so that
// every entry point accepts and rejects exactly the same attributes and sizes.
#pragma once

#include <cmath>
#include <cstdint>
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

/// Largest batch and box count any entry point accepts (the CUDA grid's y/z limit and int32 indices).
constexpr int64_t kMaxBatch = 65535;
constexpr int64_t kMaxBoxes = 0x7fffffffLL;

/// Checks the sizes of a call; "" when valid, else a one-line reason.
inline std::string checkSizes(int64_t batch, int64_t numBoxes)
{
    if (batch < 0 || batch > kMaxBatch || numBoxes < 0 || numBoxes > kMaxBoxes)
    {
        return "batch must be in [0, 65535] and the box count in [0, 2^31 - 1], got " + std::to_string(batch)
            + " x " + std::to_string(numBoxes);
    }
    return std::string();
}

/// The one launch-argument check of every entry point (plugin enqueue, CUDA launcher, host library): attributes,
/// sizes and the score type (0 = fp32, 1 = fp16). "" when valid, else a one-line reason.
inline std::string checkLaunch(Params const& p, int64_t batch, int64_t numBoxes, int scoreType)
{
    std::string reason = checkParams(p);
    if (reason.empty())
    {
        reason = checkSizes(batch, numBoxes);
    }
    if (reason.empty() && scoreType != 0 && scoreType != 1)
    {
        reason = "unknown score type " + std::to_string(scoreType) + " (0 = fp32, 1 = fp16)";
    }
    return reason;
}

} // namespace nms
} // namespace maskrt
