// Widening the stored element types to fp32 on the CPU: scalar (portable bit
// manipulation), with AVX-512 F + BW 16 lanes at a time, and with AVX2 + FMA +
// F16C 8 lanes at a time. Shared by the CPU kernels; plain C++, no torch headers.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define RLSIGNALS_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define RLSIGNALS_AVX2 1
#endif

namespace rlsignals::cpu {

// bf16 is the top half of an fp32: shift it back into place.
inline float bf16_to_float(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

// IEEE half -> float, subnormals, inf and NaN included.
inline float fp16_to_float(uint16_t v) {
  const uint32_t sign = static_cast<uint32_t>(v & 0x8000u) << 16;
  const uint32_t exponent = (v >> 10) & 0x1fu;
  const uint32_t mantissa = v & 0x3ffu;
  uint32_t bits;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  } else if (exponent == 31) {  // inf or NaN
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else {
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  }
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

#ifdef RLSIGNALS_AVX512
// 16 bf16 / fp16 values (raw 16-bit lanes) -> 16 floats.
inline __m512 widen_bf16(__m256i raw) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
inline __m512 widen_fp16(__m256i raw) { return _mm512_cvtph_ps(raw); }
#elif defined(RLSIGNALS_AVX2)
// 8 bf16 / fp16 values (raw 16-bit lanes) -> 8 floats.
inline __m256 widen_bf16(__m128i raw) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}
inline __m256 widen_fp16(__m128i raw) { return _mm256_cvtph_ps(raw); }
#endif

}  // namespace rlsignals::cpu
