// CPU kernel for delta_gram_product (see delta_products.h for the math).
//
// Per block of RB rows, inside one OpenMP parallel region:
//   phase 1 (rows split across threads): D[i] = after[i] - before[i] converted
//     to Acc into a block buffer (squares summed on the way), then
//     Y[i] = D[i] X, several rows at a time so each row of X is loaded once
//     per group; broadcast D[i][j] times the p-wide row X[j] (p <= 32 columns
//     live in one to four 512-bit registers per row);
//   phase 2 (columns split across threads): Z[j] += sum_i D[i][j] Y[i], with
//     up to 16 rows of Y held in registers.
// The input is read from memory once; the buffer (a few hundred KiB) is read
// twice from cache. bf16 is widened with a 16-bit shift, fp16 with vcvtph2ps;
// without AVX-512 (F + BW) the same code runs on a portable lane type.
#include "delta_products.h"

#include <algorithm>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define RLSIGNALS_AVX512 1
#endif

namespace rlsignals::cpu {
namespace {

constexpr int64_t kBlockBytes = 1 << 20;  // target size of the D block buffer
constexpr int64_t kColumnTile = 256;      // columns per phase-2 work item

// ---- one register of lanes in the accumulation type -------------------------
#ifdef RLSIGNALS_AVX512
template <typename Acc>
struct Lanes;
template <>
struct Lanes<float> {
  using V = __m512;
  static constexpr int W = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V set1(float s) { return _mm512_set1_ps(s); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
};
template <>
struct Lanes<double> {
  using V = __m512d;
  static constexpr int W = 8;
  static V zero() { return _mm512_setzero_pd(); }
  static V load(const double* p) { return _mm512_loadu_pd(p); }
  static void store(double* p, V v) { _mm512_storeu_pd(p, v); }
  static V set1(double s) { return _mm512_set1_pd(s); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
};
#else
template <typename Acc>
struct Lanes {
  static constexpr int W = 64 / sizeof(Acc);
  struct V {
    Acc v[W];
  };
  static V zero() { return V{}; }
  static V load(const Acc* p) {
    V r;
    std::memcpy(r.v, p, sizeof(r.v));
    return r;
  }
  static void store(Acc* p, const V& v) { std::memcpy(p, v.v, sizeof(v.v)); }
  static V set1(Acc s) {
    V r;
    std::fill(r.v, r.v + W, s);
    return r;
  }
  static V fma(const V& a, const V& b, V c) {
    for (int l = 0; l < W; ++l) c.v[l] += a.v[l] * b.v[l];
    return c;
  }
};
#endif

// ---- reading the inputs -----------------------------------------------------
inline float to_float(float v) { return v; }
inline float to_float(uint16_t bits, ElemType type) {
  if (type == ElemType::kBFloat16) {
    const uint32_t wide = static_cast<uint32_t>(bits) << 16;
    float out;
    std::memcpy(&out, &wide, sizeof(out));
    return out;
  }
  _Float16 half;
  std::memcpy(&half, &bits, sizeof(half));
  return static_cast<float>(half);
}

// out[j] = a[j] - b[j] in Acc (b null: a[j]); returns sum_j out[j]^2 summed in Acc.
// Every input value is exact in float, so the difference is rounded once, in Acc.
template <typename In, typename Acc>
Acc delta_row(const In* a, const In* b, ElemType type, int64_t n, Acc* out) {
  int64_t j = 0;
  Acc sq = 0;
#ifdef RLSIGNALS_AVX512
  auto load16 = [type](const In* p, __mmask16 m) {
    if constexpr (sizeof(In) == 4) {
      return _mm512_maskz_loadu_ps(m, p);
    } else {
      const __m256i raw = _mm256_maskz_loadu_epi16(m, p);
      if (type == ElemType::kBFloat16) {
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
      }
      return _mm512_cvtph_ps(raw);
    }
  };
  if constexpr (sizeof(Acc) == 4) {
    __m512 acc = _mm512_setzero_ps();
    for (; j < n; j += 16) {
      const __mmask16 m = n - j >= 16 ? 0xffff : static_cast<__mmask16>((1u << (n - j)) - 1u);
      __m512 d = load16(a + j, m);
      if (b) d = _mm512_sub_ps(d, load16(b + j, m));
      _mm512_mask_storeu_ps(out + j, m, d);
      acc = _mm512_fmadd_ps(d, d, acc);
    }
    sq = _mm512_reduce_add_ps(acc);
  } else {
    __m512d acc = _mm512_setzero_pd();
    for (; j < n; j += 16) {
      const __mmask16 m = n - j >= 16 ? 0xffff : static_cast<__mmask16>((1u << (n - j)) - 1u);
      const __m512 va = load16(a + j, m);
      const __m512 vb = b ? load16(b + j, m) : _mm512_setzero_ps();
      for (int half = 0; half < 2; ++half) {
        const __m256 ha = half ? _mm512_extractf32x8_ps(va, 1) : _mm512_castps512_ps256(va);
        const __m256 hb = half ? _mm512_extractf32x8_ps(vb, 1) : _mm512_castps512_ps256(vb);
        const __m512d d = _mm512_sub_pd(_mm512_cvtps_pd(ha), _mm512_cvtps_pd(hb));
        _mm512_mask_storeu_pd(out + j + 8 * half, static_cast<__mmask8>(m >> (8 * half)), d);
        acc = _mm512_fmadd_pd(d, d, acc);
      }
    }
    sq = _mm512_reduce_add_pd(acc);
  }
#else
  auto read = [type](const In* p, int64_t j) {
    if constexpr (sizeof(In) == 4) {
      return to_float(p[j]);
    } else {
      return to_float(p[j], type);
    }
  };
  for (; j < n; ++j) {
    const Acc d = static_cast<Acc>(read(a, j)) - (b ? static_cast<Acc>(read(b, j)) : Acc(0));
    out[j] = d;
    sq += d * d;
  }
#endif
  return sq;
}

// ---- the two micro-kernels --------------------------------------------------
// Each keeps 8 (6 for NV = 3) independent FMA chains in flight: enough to hide
// the FMA latency at two FMAs a cycle. The order of every sum is unchanged.
template <int NV>
constexpr int kChains = NV == 3 ? 2 : 8 / NV;  // rows (phase 1) or columns (phase 2) at a time

// y[r] = sum_j d[r * ld + j] x[j] for r < R, j in order; x and y rows hold NV registers.
template <typename Acc, int NV, int R>
void rows_times_x(const Acc* d, int64_t ld, int64_t n, const Acc* x, Acc* y) {
  using L = Lanes<Acc>;
  constexpr int P = NV * L::W;
  typename L::V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = L::zero();
  for (int64_t j = 0; j < n; ++j) {
    typename L::V xv[NV];
    for (int v = 0; v < NV; ++v) xv[v] = L::load(x + j * P + v * L::W);
    for (int r = 0; r < R; ++r) {
      const auto dv = L::set1(d[r * ld + j]);
      for (int v = 0; v < NV; ++v) acc[r][v] = L::fma(dv, xv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) L::store(y + r * P + v * L::W, acc[r][v]);
}

// z[j] += sum_{r < R} d[r * ld + j] y[r] for j in [j0, j0 + C), rows added in order.
template <typename Acc, int NV, int R, int C>
inline void add_columns(const Acc* d, int64_t ld, int64_t j0, const typename Lanes<Acc>::V (&yv)[R][NV], Acc* z) {
  using L = Lanes<Acc>;
  constexpr int P = NV * L::W;
  typename L::V zv[C][NV];
  for (int c = 0; c < C; ++c)
    for (int v = 0; v < NV; ++v) zv[c][v] = L::load(z + (j0 + c) * P + v * L::W);
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      const auto dv = L::set1(d[r * ld + j0 + c]);
      for (int v = 0; v < NV; ++v) zv[c][v] = L::fma(dv, yv[r][v], zv[c][v]);
    }
  }
  for (int c = 0; c < C; ++c)
    for (int v = 0; v < NV; ++v) L::store(z + (j0 + c) * P + v * L::W, zv[c][v]);
}

// z[j] += sum_{r < R} d[r * ld + j] y[r] for j in [j0, j1), rows added in order.
template <typename Acc, int NV, int R>
void add_dt_y(const Acc* d, int64_t ld, int64_t j0, int64_t j1, const Acc* y, Acc* z) {
  using L = Lanes<Acc>;
  constexpr int P = NV * L::W;
  constexpr int C = kChains<NV>;
  typename L::V yv[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) yv[r][v] = L::load(y + r * P + v * L::W);
  int64_t j = j0;
  for (; j + C <= j1; j += C) add_columns<Acc, NV, R, C>(d, ld, j, yv, z);
  for (; j < j1; ++j) add_columns<Acc, NV, R, 1>(d, ld, j, yv, z);
}

// ---- the pass -----------------------------------------------------------------
template <typename In, typename Acc, int NV>
double product_pass(const In* a, const In* b, ElemType type, int64_t m, int64_t n, int64_t sa, int64_t sb,
                    const Acc* x, int64_t p, Acc* y, Acc* z) {
  constexpr int P = NV * Lanes<Acc>::W;
  constexpr int kRowsPhase1 = kChains<NV>;
  constexpr int kRowsPhase2 = 16 / NV;
  const int64_t rb = std::clamp<int64_t>(kBlockBytes / (n * static_cast<int64_t>(sizeof(Acc))) / 16 * 16, 16, 256);
  std::vector<Acc> xp(n * P, Acc(0)), zp(n * P, Acc(0)), block(rb * n), yb(rb * P);
  std::vector<Acc> rowsq(rb);
  for (int64_t j = 0; j < n; ++j) std::copy(x + j * p, x + j * p + p, xp.begin() + j * P);
  const int64_t tiles = (n + kColumnTile - 1) / kColumnTile;
  double frob2 = 0.0;

#pragma omp parallel
  for (int64_t r0 = 0; r0 < m; r0 += rb) {
    const int64_t rows = std::min(rb, m - r0);
    const int64_t groups = (rows + kRowsPhase1 - 1) / kRowsPhase1;
#pragma omp for schedule(static)
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t first = g * kRowsPhase1;
      const int64_t count = std::min<int64_t>(kRowsPhase1, rows - first);
      for (int64_t i = first; i < first + count; ++i) {
        const int64_t row = r0 + i;
        rowsq[i] = delta_row<In, Acc>(a + row * sa, b ? b + row * sb : nullptr, type, n, block.data() + i * n);
      }
      if (count == kRowsPhase1) {
        rows_times_x<Acc, NV, kRowsPhase1>(block.data() + first * n, n, n, xp.data(), yb.data() + first * P);
      } else {
        for (int64_t i = first; i < first + count; ++i)
          rows_times_x<Acc, NV, 1>(block.data() + i * n, n, n, xp.data(), yb.data() + i * P);
      }
      for (int64_t i = first; i < first + count; ++i)
        std::copy(yb.begin() + i * P, yb.begin() + i * P + p, y + (r0 + i) * p);
    }
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t j0 = t * kColumnTile, j1 = std::min(n, j0 + kColumnTile);
      int64_t r = 0;
      for (; r + kRowsPhase2 <= rows; r += kRowsPhase2)
        add_dt_y<Acc, NV, kRowsPhase2>(block.data() + r * n, n, j0, j1, yb.data() + r * P, zp.data());
      for (; r < rows; ++r) add_dt_y<Acc, NV, 1>(block.data() + r * n, n, j0, j1, yb.data() + r * P, zp.data());
    }
#pragma omp single
    for (int64_t i = 0; i < rows; ++i) frob2 += static_cast<double>(rowsq[i]);
  }

  for (int64_t j = 0; j < n; ++j) std::copy(zp.begin() + j * P, zp.begin() + j * P + p, z + j * p);
  return frob2;
}

template <typename In, typename Acc>
double product_typed(const In* a, const In* b, ElemType type, int64_t m, int64_t n, int64_t sa, int64_t sb,
                     const Acc* x, int64_t p, Acc* y, Acc* z) {
  switch ((p + Lanes<Acc>::W - 1) / Lanes<Acc>::W) {
    case 1: return product_pass<In, Acc, 1>(a, b, type, m, n, sa, sb, x, p, y, z);
    case 2: return product_pass<In, Acc, 2>(a, b, type, m, n, sa, sb, x, p, y, z);
    case 3: return product_pass<In, Acc, 3>(a, b, type, m, n, sa, sb, x, p, y, z);
    default: return product_pass<In, Acc, 4>(a, b, type, m, n, sa, sb, x, p, y, z);
  }
}

template <typename Acc>
double product(const void* a, const void* b, ElemType type, int64_t m, int64_t n, int64_t sa, int64_t sb,
               const Acc* x, int64_t p, Acc* y, Acc* z) {
  if (type == ElemType::kFloat32) {
    return product_typed<float, Acc>(static_cast<const float*>(a), static_cast<const float*>(b), type, m, n, sa,
                                     sb, x, p, y, z);
  }
  return product_typed<uint16_t, Acc>(static_cast<const uint16_t*>(a), static_cast<const uint16_t*>(b), type, m,
                                      n, sa, sb, x, p, y, z);
}

}  // namespace

double delta_gram_product(const void* after, const void* before, ElemType type, int64_t m, int64_t n,
                          int64_t after_stride, int64_t before_stride, const float* x, int64_t p, float* y,
                          float* z) {
  return product<float>(after, before, type, m, n, after_stride, before_stride, x, p, y, z);
}

double delta_gram_product(const void* after, const void* before, ElemType type, int64_t m, int64_t n,
                          int64_t after_stride, int64_t before_stride, const double* x, int64_t p, double* y,
                          double* z) {
  return product<double>(after, before, type, m, n, after_stride, before_stride, x, p, y, z);
}

}  // namespace rlsignals::cpu
