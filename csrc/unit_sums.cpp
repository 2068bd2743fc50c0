// CPU kernel for unit_sums (see unit_sums.h for the math).
//
// One pass over memory: each row is read from DRAM once, its squared norm is
// taken with 512-bit FMAs, and the row (now in L1) is scaled and added to the
// range's fp32 accumulator. bf16 is widened with a 16-bit shift, fp16 with
// vcvtph2ps. Without AVX-512 (F + BW) a portable loop with 16 independent
// partial sums is compiled, which the compiler vectorizes (e.g. to AVX2).
#include "unit_sums.h"

#include <algorithm>
#include <cmath>

#include "widen.h"

namespace rlsignals::cpu {
namespace {

// Element readers: scalar conversion, and (with AVX-512) 16 lanes at a time.
struct F32 {
  using T = float;
  static float scalar(const T* p) { return *p; }
#ifdef RLSIGNALS_AVX512
  static __m512 load(const T* p) { return _mm512_loadu_ps(p); }
  static __m512 load_tail(const T* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
#endif
};

struct BF16 {
  using T = uint16_t;
  static float scalar(const T* p) { return bf16_to_float(*p); }
#ifdef RLSIGNALS_AVX512
  static __m512 load(const T* p) { return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static __m512 load_tail(const T* p, __mmask16 m) { return widen_bf16(_mm256_maskz_loadu_epi16(m, p)); }
#endif
};

struct F16 {
  using T = uint16_t;
  static float scalar(const T* p) { return fp16_to_float(*p); }
#ifdef RLSIGNALS_AVX512
  static __m512 load(const T* p) { return widen_fp16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static __m512 load_tail(const T* p, __mmask16 m) { return widen_fp16(_mm256_maskz_loadu_epi16(m, p)); }
#endif
};

// 2^-100: rows whose squared norm overflows fp32 are summed again scaled by it.
// Every finite fp32 or bf16 value (< 2^128) then squares to < 2^56, and such a
// row's largest entry (> 2^64 / sqrt(d)) stays far above the underflow range.
constexpr float kDownscale = 0x1p-100f;

// The rare path of accumulate_unit_row: ||row||^2 overflowed fp32 (entries
// above about 1.8e19 / sqrt(d), or an inf). u = (row * 2^-100) / ||row * 2^-100||,
// exact scaling, no eps needed (the norm is > 2^64); an inf entry gives NaN
// there and 0 elsewhere, as the plain formula does.
template <typename R>
float accumulate_scaled_row(const typename R::T* row, int64_t d, float* acc) {
  float sumsq = 0.0f;
  for (int64_t c = 0; c < d; ++c) {
    const float x = R::scalar(row + c) * kDownscale;
    sumsq += x * x;
  }
  const float inv = 1.0f / std::sqrt(sumsq);
  for (int64_t c = 0; c < d; ++c) acc[c] += (R::scalar(row + c) * kDownscale) * inv;
  return sumsq * inv * inv;
}

// Adds u = row / max(||row||, eps) to acc[0:d]; returns ||u||^2.
template <typename R>
inline float accumulate_unit_row(const typename R::T* row, int64_t d, float eps, float* acc) {
#ifdef RLSIGNALS_AVX512
  const int64_t full = d - d % 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (d % 16)) - 1u);
  __m512 ss0 = _mm512_setzero_ps(), ss1 = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 32 <= full; c += 32) {
    const __m512 a = R::load(row + c), b = R::load(row + c + 16);
    ss0 = _mm512_fmadd_ps(a, a, ss0);
    ss1 = _mm512_fmadd_ps(b, b, ss1);
  }
  for (; c < full; c += 16) {
    const __m512 a = R::load(row + c);
    ss0 = _mm512_fmadd_ps(a, a, ss0);
  }
  if (tail) {
    const __m512 a = R::load_tail(row + full, tail);
    ss1 = _mm512_fmadd_ps(a, a, ss1);
  }
  const float sumsq = _mm512_reduce_add_ps(_mm512_add_ps(ss0, ss1));
  if (std::isinf(sumsq)) return accumulate_scaled_row<R>(row, d, acc);
  const float inv = 1.0f / std::max(std::sqrt(sumsq), eps);
  const __m512 scale = _mm512_set1_ps(inv);
  for (c = 0; c < full; c += 16) {
    _mm512_storeu_ps(acc + c, _mm512_fmadd_ps(R::load(row + c), scale, _mm512_loadu_ps(acc + c)));
  }
  if (tail) {
    const __m512 sum = _mm512_fmadd_ps(R::load_tail(row + full, tail), scale,
                                       _mm512_maskz_loadu_ps(tail, acc + full));
    _mm512_mask_storeu_ps(acc + full, tail, sum);
  }
#else
  // kLanes independent partial sums: no loop-carried dependency, so the compiler
  // vectorizes both loops for whatever SIMD -march=native offers (AVX2, NEON).
  constexpr int64_t kLanes = 16;
  float partial[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= d; c += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      const float x = R::scalar(row + c + l);
      partial[l] += x * x;
    }
  }
  for (int64_t l = 0; c < d; ++c, ++l) {
    const float x = R::scalar(row + c);
    partial[l] += x * x;
  }
  for (int64_t width = kLanes / 2; width > 0; width /= 2) {
    for (int64_t l = 0; l < width; ++l) partial[l] += partial[l + width];
  }
  const float sumsq = partial[0];
  if (std::isinf(sumsq)) return accumulate_scaled_row<R>(row, d, acc);
  const float inv = 1.0f / std::max(std::sqrt(sumsq), eps);
  for (int64_t c = 0; c < d; ++c) acc[c] += R::scalar(row + c) * inv;
#endif
  return sumsq * inv * inv;
}

template <typename R>
void unit_sums_typed(const typename R::T* hidden, int64_t d, int64_t row_stride,
                     const int64_t* offsets, int64_t num_ranges, float eps, float* sums,
                     float* sqsums) {
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t r = 0; r < num_ranges; ++r) {
    float* acc = sums + r * d;
    std::fill(acc, acc + d, 0.0f);
    float sq = 0.0f;
    for (int64_t i = offsets[r]; i < offsets[r + 1]; ++i) {
      sq += accumulate_unit_row<R>(hidden + i * row_stride, d, eps, acc);
    }
    sqsums[r] = sq;
  }
}

}  // namespace

void unit_sums(const void* hidden, ElemType type, int64_t d, int64_t row_stride,
               const int64_t* offsets, int64_t num_ranges, float eps, float* sums,
               float* sqsums) {
  switch (type) {
    case ElemType::kFloat32:
      unit_sums_typed<F32>(static_cast<const float*>(hidden), d, row_stride, offsets,
                           num_ranges, eps, sums, sqsums);
      break;
    case ElemType::kFloat16:
      unit_sums_typed<F16>(static_cast<const uint16_t*>(hidden), d, row_stride, offsets,
                           num_ranges, eps, sums, sqsums);
      break;
    case ElemType::kBFloat16:
      unit_sums_typed<BF16>(static_cast<const uint16_t*>(hidden), d, row_stride, offsets,
                            num_ranges, eps, sums, sqsums);
      break;
  }
}

}  // namespace rlsignals::cpu
