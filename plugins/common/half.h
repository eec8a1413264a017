// Bit-exact IEEE binary16 <-> binary32 conversion for host code (round to nearest even), so that the CPU build
// reads and writes fp16 tensors exactly like the CUDA __half2float / __float2half_rn intrinsics.
#pragma once

#include <cstdint>
#include <cstring>

namespace maskrt {

/// fp16 storage on the host: a raw 16-bit pattern.
struct HalfBits
{
    uint16_t bits;
};

inline float halfToFloat(HalfBits h)
{
    uint32_t const sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
    uint32_t exponent = (h.bits >> 10) & 0x1fu;
    uint32_t mantissa = h.bits & 0x3ffu;
    uint32_t out;
    if (exponent == 0x1fu)
    {
        out = sign | 0x7f800000u | (mantissa << 13); // inf / NaN
    }
    else if (exponent != 0)
    {
        out = sign | ((exponent + 112u) << 23) | (mantissa << 13); // normal: rebias 15 -> 127
    }
    else if (mantissa == 0)
    {
        out = sign; // signed zero
    }
    else
    {
        // subnormal half: normalise into a binary32 normal
        exponent = 113u;
        while ((mantissa & 0x400u) == 0)
        {
            mantissa <<= 1;
            --exponent;
        }
        out = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
    }
    float f;
    std::memcpy(&f, &out, sizeof f);
    return f;
}

inline HalfBits floatToHalf(float f)
{
    uint32_t x;
    std::memcpy(&x, &f, sizeof x);
    uint16_t const sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    uint32_t const absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) // inf or NaN (keep NaN quiet)
    {
        return HalfBits{static_cast<uint16_t>(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0u))};
    }
    if (absx >= 0x477ff000u) // rounds to >= 65520: overflow to inf
    {
        return HalfBits{static_cast<uint16_t>(sign | 0x7c00u)};
    }
    if (absx < 0x38800000u) // below the smallest half normal (2^-14): subnormal or zero
    {
        if (absx < 0x33000000u) // < 2^-25 rounds to zero (ties to even at exactly 2^-25 -> 0)
        {
            return HalfBits{sign};
        }
        uint32_t const exponent = absx >> 23;
        uint32_t const mantissa = (absx & 0x7fffffu) | 0x800000u;
        uint32_t const shift = 126u - exponent; // 14..24 -> value = mantissa >> (shift)
        uint32_t half = mantissa >> shift;
        uint32_t const rem = mantissa & ((1u << shift) - 1u);
        uint32_t const halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (half & 1u)))
        {
            ++half;
        }
        return HalfBits{static_cast<uint16_t>(sign | half)};
    }
    uint32_t half = ((absx >> 23) - 112u) << 10 | ((absx >> 13) & 0x3ffu);
    uint32_t const rem = absx & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (half & 1u)))
    {
        ++half; // may carry into the exponent, which is the correct rounding
    }
    return HalfBits{static_cast<uint16_t>(sign | half)};
}

} // namespace maskrt
