// BatchedNMS kernel core: written once, compiled as CUDA device code (nms_kernel.cu) and as plain C++
// (host_api.cpp). Semantics = torchvision.ops.batched_nms on the candidates whose score is above the threshold,
// truncated to max_output_boxes; see docs/plugins.md.
//
// Defined here, for both builds:
//  * a candidate needs score > score_threshold (fp32 compare; fp16 scores are widened exactly), so NaN scores are
//    never kept;
//  * candidates are ordered by descending score, ties by lower index (-0 and +0 compare equal);
//  * IoU = inter / (area_i + area_j - inter) with area = (x2 - x1) * (y2 - y1), in fp32 without FMA contraction,
//    exactly torchvision's CPU kernel; j is suppressed when IoU > iou_threshold. A box with a NaN coordinate has a
//    NaN IoU with every box, so it suppresses nothing and is suppressed by nothing (kept if its score qualifies);
//  * at most kMaxCandidates candidates per image enter the NMS: above that, only the kMaxCandidates best (by the
//    order above) are considered, like a pre-NMS top-k. This bounds the IoU bitmask of the CUDA path.
#pragma once

#include <stdint.h>
#include <string.h>

#include "../common/macros.h"

namespace maskrt
{
namespace nms
{

/// Most candidates per image that enter the NMS (bitmask: kMaxCandidates^2 / 8 bytes = 8 MiB per image).
constexpr int kMaxCandidates = 8192;

/// Operator attributes (the plugin fields), already validated.
struct Params
{
    float iouThreshold;   // in [0, 1]
    float scoreThreshold; // finite
    int maxOutputBoxes;   // >= 0
};

/// A candidate passes the score filter (false for NaN).
MASKRT_HD bool isCandidate(float score, float scoreThreshold)
{
    return score > scoreThreshold;
}

/// 64-bit sort key: ascending keys = descending score, then ascending index. Unique per index.
MASKRT_HD uint64_t sortKey(float score, uint32_t index)
{
    float const s = score == 0.f ? 0.f : score; // -0 == +0
    uint32_t bits;
#if defined(__CUDA_ARCH__)
    bits = __float_as_uint(s);
#else
    memcpy(&bits, &s, sizeof bits);
#endif
    uint32_t const ascending = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u); // float order as uint order
    return (static_cast<uint64_t>(~ascending) << 32) | index;
}

MASKRT_HD uint32_t keyIndex(uint64_t key)
{
    return static_cast<uint32_t>(key & 0xffffffffu);
}

// fp32 arithmetic that nvcc may not contract into FMAs (the host build compiles with -ffp-contract=off).
MASKRT_HD float mulRn(float a, float b)
{
#if defined(__CUDA_ARCH__)
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}

MASKRT_HD float addRn(float a, float b)
{
#if defined(__CUDA_ARCH__)
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}

MASKRT_HD float subRn(float a, float b)
{
#if defined(__CUDA_ARCH__)
    return __fsub_rn(a, b);
#else
    return a - b;
#endif
}

// std::max / std::min argument order of torchvision's CPU kernel (matters only for NaN, whose IoU is NaN anyway).
MASKRT_HD float maxOf(float a, float b)
{
    return a < b ? b : a;
}

MASKRT_HD float minOf(float a, float b)
{
    return b < a ? b : a;
}

/// (x2 - x1) * (y2 - y1).
MASKRT_HD float boxArea(float const* b)
{
    return mulRn(subRn(b[2], b[0]), subRn(b[3], b[1]));
}

/// Whether box j is suppressed by box i (torchvision: IoU > threshold). areaI/areaJ from boxArea.
MASKRT_HD bool suppresses(float const* i, float areaI, float const* j, float areaJ, float iouThreshold)
{
    float const xx1 = maxOf(i[0], j[0]);
    float const yy1 = maxOf(i[1], j[1]);
    float const xx2 = minOf(i[2], j[2]);
    float const yy2 = minOf(i[3], j[3]);
    float const w = maxOf(0.f, subRn(xx2, xx1));
    float const h = maxOf(0.f, subRn(yy2, yy1));
    float const inter = mulRn(w, h);
    if (inter == 0.f)
    {
        return false; // IoU 0 (or NaN, -0): never above a threshold in [0, 1]; skips the division
    }
    float const iou = inter / subRn(addRn(areaI, areaJ), inter);
    return iou > iouThreshold;
}

} // namespace nms
} // namespace maskrt
