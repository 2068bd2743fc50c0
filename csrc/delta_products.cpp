// CPU kernel for delta_products (see delta_products.h for the math).
//
// The rows are cut into fixed slabs (their number set by the sizes, never by
// the thread count); threads take slabs dynamically, and each slab adds into
// its own Z partial, so threads never wait for each other until the end, when the
// partials are added in slab order. Within a slab, groups of 16 rows:
//   - convert: D[i] = after[i] - before[i] in Acc into a small buffer, squares
//     summed on the way, the rows of the next group asked into L2 meanwhile;
//   - Y[i] = D[i] X and Z_slab += D^T Y in one of two layouts:
//     p > 4, columns on the lanes: broadcast D[i][j] times the p-wide row X[j]
//     (p <= 32 columns in one to eight vector registers), several rows at a
//     time; then a few rows of Z held in registers while the group's rows
//     stream past, so Z is read and written once a group;
//     p <= 4, rows on the lanes: Y[i][c] a dot product along j of D[i] with
//     column c of X (stored transposed), Z^T[c] += Y[i][c] D[i] along j; no
//     lane is wasted on padding columns.
// The input is read from memory once; the buffer is read twice from cache.
// bf16 is widened with a 16-bit shift, fp16 with vcvtph2ps; registers are
// 512-bit with AVX-512 (F + BW), 256-bit with AVX2 + FMA + F16C, and otherwise
// the same code runs on a portable lane type.
#include "delta_products.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "widen.h"

namespace rlsignals::cpu {
namespace {

constexpr int64_t kSlabRows = 256;  // rows per slab (a work item with its own Z partial)
constexpr int64_t kMaxSlabs = 64;
constexpr int kGroup = 16;          // rows converted at a time (their Y rows stay in L1)

// ---- one register of lanes in the accumulation type -------------------------
#if defined(RLSIGNALS_AVX512)
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
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
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
  static V add(V a, V b) { return _mm512_add_pd(a, b); }
};
#elif defined(RLSIGNALS_AVX2)
template <typename Acc>
struct Lanes;
template <>
struct Lanes<float> {
  using V = __m256;
  static constexpr int W = 8;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V set1(float s) { return _mm256_set1_ps(s); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
};
template <>
struct Lanes<double> {
  using V = __m256d;
  static constexpr int W = 4;
  static V zero() { return _mm256_setzero_pd(); }
  static V load(const double* p) { return _mm256_loadu_pd(p); }
  static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  static V set1(double s) { return _mm256_set1_pd(s); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
};
#else
template <typename Acc>
struct Lanes {
  static constexpr int W = 32 / sizeof(Acc);
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
  static V add(V a, const V& b) {
    for (int l = 0; l < W; ++l) a.v[l] += b.v[l];
    return a;
  }
};
#endif

// ---- reading the inputs -----------------------------------------------------
inline float to_float(float v) { return v; }
inline float to_float(uint16_t bits, ElemType type) {
  return type == ElemType::kBFloat16 ? bf16_to_float(bits) : fp16_to_float(bits);
}

// out[j] = a[j] - b[j] in Acc (b null: a[j]); returns sum_j out[j]^2 summed in Acc.
// Every input value is exact in float, so the difference is rounded once, in Acc.
// a_next / b_next (may be null): a later row, asked into L2 on the way, so that its
// loads overlap the multiply-adds that run before it is converted.
template <typename In, typename Acc>
Acc delta_row(const In* a, const In* b, ElemType type, int64_t n, Acc* out, const In* a_next, const In* b_next) {
  auto prefetch = [a_next, b_next](int64_t j) {
    if ((j * static_cast<int64_t>(sizeof(In))) % 64 != 0) return;
    if (a_next) __builtin_prefetch(a_next + j, 0, 2);
    if (b_next) __builtin_prefetch(b_next + j, 0, 2);
  };
  int64_t j = 0;
  Acc sq = 0;
#ifdef RLSIGNALS_AVX512
  // Full vectors take plain loads and stores; only the tail is masked.
  auto load16 = [type](const In* p, __mmask16 m) {
    if constexpr (sizeof(In) == 4) {
      return m == 0xffff ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m, p);
    } else {
      const __m256i raw = m == 0xffff ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                                      : _mm256_maskz_loadu_epi16(m, p);
      return type == ElemType::kBFloat16 ? widen_bf16(raw) : widen_fp16(raw);
    }
  };
  auto tail_mask = [n](int64_t j) {
    return n - j >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (n - j)) - 1u);
  };
  if constexpr (sizeof(Acc) == 4) {
    __m512 acc = _mm512_setzero_ps();
    for (; j < n; j += 16) {
      prefetch(j);
      const __mmask16 m = tail_mask(j);
      __m512 d = load16(a + j, m);
      if (b) d = _mm512_sub_ps(d, load16(b + j, m));
      if (m == 0xffff) {
        _mm512_storeu_ps(out + j, d);
      } else {
        _mm512_mask_storeu_ps(out + j, m, d);
      }
      acc = _mm512_fmadd_ps(d, d, acc);
    }
    sq = _mm512_reduce_add_ps(acc);
  } else {
    __m512d acc = _mm512_setzero_pd();
    for (; j < n; j += 16) {
      prefetch(j);
      const __mmask16 m = tail_mask(j);
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
#if defined(RLSIGNALS_AVX2)
  // Whole vectors of 8; the tail takes the scalar loop below.
  auto load8 = [type](const In* p) {
    if constexpr (sizeof(In) == 4) {
      return _mm256_loadu_ps(p);
    } else {
      const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
      return type == ElemType::kBFloat16 ? widen_bf16(raw) : widen_fp16(raw);
    }
  };
  if constexpr (sizeof(Acc) == 4) {
    __m256 acc = _mm256_setzero_ps();
    for (; j + 8 <= n; j += 8) {
      prefetch(j);
      __m256 d = load8(a + j);
      if (b) d = _mm256_sub_ps(d, load8(b + j));
      _mm256_storeu_ps(out + j, d);
      acc = _mm256_fmadd_ps(d, d, acc);
    }
    alignas(32) float part[8];
    _mm256_store_ps(part, acc);
    for (float v : part) sq += v;
  } else {
    __m256d acc = _mm256_setzero_pd();
    for (; j + 8 <= n; j += 8) {
      prefetch(j);
      const __m256 va = load8(a + j);
      const __m256 vb = b ? load8(b + j) : _mm256_setzero_ps();
      for (int half = 0; half < 2; ++half) {
        const __m128 ha = half ? _mm256_extractf128_ps(va, 1) : _mm256_castps256_ps128(va);
        const __m128 hb = half ? _mm256_extractf128_ps(vb, 1) : _mm256_castps256_ps128(vb);
        const __m256d d = _mm256_sub_pd(_mm256_cvtps_pd(ha), _mm256_cvtps_pd(hb));
        _mm256_storeu_pd(out + j + 4 * half, d);
        acc = _mm256_fmadd_pd(d, d, acc);
      }
    }
    alignas(32) double part[4];
    _mm256_store_pd(part, acc);
    for (double v : part) sq += v;
  }
#endif
  auto read = [type](const In* p, int64_t j) {
    if constexpr (sizeof(In) == 4) {
      return to_float(p[j]);
    } else {
      return to_float(p[j], type);
    }
  };
  for (; j < n; ++j) {
    prefetch(j);
    const Acc d = static_cast<Acc>(read(a, j)) - (b ? static_cast<Acc>(read(b, j)) : Acc(0));
    out[j] = d;
    sq += d * d;
  }
#endif
  return sq;
}

// ---- columns on the lanes (p > 4) ---------------------------------------------
// X and Z rows are p wide, padded to P = NV registers: Y[i] = sum_j D[i][j] X[j] broadcasts
// D[i][j]; Z[j] += sum_i D[i][j] Y[i] likewise. Each micro-kernel keeps 8 (6 for NV = 3)
// independent FMA chains in flight, enough to hide the FMA latency at two FMAs a cycle, in
// at most 13 registers (AVX2 has 16).
template <int NV>
constexpr int kChains = NV == 3 ? 2 : NV > 4 ? 1 : 8 / NV;  // rows (phase 1) or columns (phase 2) at a time

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

// z[j] += sum_{r < rows} d[r * ld + j] y[r] for j in [j0, j0 + C), rows added in order;
// the C rows of z stay in registers while the rows stream past.
template <typename Acc, int NV, int C>
inline void add_columns(const Acc* d, int64_t ld, int64_t rows, int64_t j0, const Acc* y, Acc* z) {
  using L = Lanes<Acc>;
  constexpr int P = NV * L::W;
  typename L::V zv[C][NV];
  for (int c = 0; c < C; ++c)
    for (int v = 0; v < NV; ++v) zv[c][v] = L::load(z + (j0 + c) * P + v * L::W);
  for (int64_t r = 0; r < rows; ++r) {
    typename L::V yv[NV];
    for (int v = 0; v < NV; ++v) yv[v] = L::load(y + r * P + v * L::W);
    for (int c = 0; c < C; ++c) {
      const auto dv = L::set1(d[r * ld + j0 + c]);
      for (int v = 0; v < NV; ++v) zv[c][v] = L::fma(dv, yv[v], zv[c][v]);
    }
  }
  for (int c = 0; c < C; ++c)
    for (int v = 0; v < NV; ++v) L::store(z + (j0 + c) * P + v * L::W, zv[c][v]);
}

template <typename Acc, int NV>
struct ColumnsOnLanes {
  static constexpr int P = NV * Lanes<Acc>::W;
  static constexpr int kRowsPhase1 = kChains<NV>;
  int64_t n, p;
  std::vector<Acc> xp;  // [n][P]

  ColumnsOnLanes(const Acc* x, int64_t n_, int64_t p_) : n(n_), p(p_), xp(n_ * P, Acc(0)) {
    for (int64_t j = 0; j < n; ++j) std::copy(x + j * p, x + j * p + p, xp.begin() + j * P);
  }
  int64_t partial_size() const { return n * P; }  // a slab's Z partial: [n][P]
  int64_t scratch_size() const { return kGroup * P; }

  // Y rows of the group (d: `rows` rows of D at stride ld) into y_out ([rows][p]), and
  // their D^T Y added into zs.
  void group(const Acc* d, int64_t ld, int64_t rows, Acc* scratch, Acc* y_out, Acc* zs) const {
    int64_t i = 0;
    for (; i + kRowsPhase1 <= rows; i += kRowsPhase1)
      rows_times_x<Acc, NV, kRowsPhase1>(d + i * ld, ld, n, xp.data(), scratch + i * P);
    for (; i < rows; ++i) rows_times_x<Acc, NV, 1>(d + i * ld, ld, n, xp.data(), scratch + i * P);
    for (i = 0; i < rows; ++i) std::copy(scratch + i * P, scratch + i * P + p, y_out + i * p);
    constexpr int C = kChains<NV>;
    int64_t j = 0;
    for (; j + C <= n; j += C) add_columns<Acc, NV, C>(d, ld, rows, j, scratch, zs);
    for (; j < n; ++j) add_columns<Acc, NV, 1>(d, ld, rows, j, scratch, zs);
  }

  // z[j][:p] = sum over slabs, in slab order.
  void reduce(const Acc* partial, int64_t slabs, int64_t j, Acc* z) const {
    using L = Lanes<Acc>;
    typename L::V sum[NV];
    for (int v = 0; v < NV; ++v) sum[v] = L::zero();
    for (int64_t s = 0; s < slabs; ++s)
      for (int v = 0; v < NV; ++v) sum[v] = L::add(sum[v], L::load(partial + (s * n + j) * P + v * L::W));
    Acc row[P];
    for (int v = 0; v < NV; ++v) L::store(row + v * L::W, sum[v]);
    std::copy(row, row + p, z + j * p);
  }
};

// ---- rows on the lanes (p <= 4) ----------------------------------------------
// With few columns, padding them to a register wastes most of each FMA. Instead the lanes
// run along j: Y[i][c] is a dot product of D[i] with column c of X (stored transposed,
// [p][n_pad]), and Z^T[c] += Y[i][c] D[i] an axpy along j. The work is 2 p FMAs per element,
// as with p full columns; the products of p <= 4 columns then cost little more than
// reading the rows. n_pad = n rounded up to kJ registers, the tail of every buffer zero.
template <int PC>
constexpr int kDotRows = PC == 1 ? 8 : PC == 2 ? 6 : PC == 3 ? 4 : 3;  // PC * rows <= 12 accumulators
constexpr int kJ = 2;                                                   // registers of j per Z step

template <typename Acc, int PC>
struct RowsOnLanes {
  using L = Lanes<Acc>;
  static constexpr int kStep = kJ * L::W;
  int64_t n, n_pad;
  std::vector<Acc> xt;  // [PC][n_pad]

  RowsOnLanes(const Acc* x, int64_t n_, int64_t) : n(n_), n_pad((n_ + kStep - 1) / kStep * kStep), xt(PC * n_pad, Acc(0)) {
    for (int64_t j = 0; j < n; ++j)
      for (int c = 0; c < PC; ++c) xt[c * n_pad + j] = x[j * PC + c];
  }
  int64_t partial_size() const { return PC * n_pad; }  // a slab's Z partial, transposed: [PC][n_pad]
  int64_t scratch_size() const { return kGroup * PC; }

  // y[r][c] = D[r] . xt[c] for R rows from d (stride ld).
  template <int R>
  void dots(const Acc* d, int64_t ld, Acc* y) const {
    typename L::V acc[R][PC];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < PC; ++c) acc[r][c] = L::zero();
    for (int64_t j = 0; j < n_pad; j += L::W) {
      typename L::V xv[PC];
      for (int c = 0; c < PC; ++c) xv[c] = L::load(xt.data() + c * n_pad + j);
      for (int r = 0; r < R; ++r) {
        const auto dv = L::load(d + r * ld + j);
        for (int c = 0; c < PC; ++c) acc[r][c] = L::fma(dv, xv[c], acc[r][c]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < PC; ++c) {
        Acc lanes[L::W];
        L::store(lanes, acc[r][c]);
        Acc sum = 0;
        for (Acc v : lanes) sum += v;
        y[r * PC + c] = sum;
      }
  }

  void group(const Acc* d, int64_t ld, int64_t rows, Acc*, Acc* y_out, Acc* zs) const {
    constexpr int R = kDotRows<PC>;
    int64_t i = 0;
    for (; i + R <= rows; i += R) dots<R>(d + i * ld, ld, y_out + i * PC);
    for (; i < rows; ++i) dots<1>(d + i * ld, ld, y_out + i * PC);
    // zs[c][j] += sum_r y[r][c] d[r][j]: kJ registers of j for every c held while rows stream past
    for (int64_t j = 0; j < n_pad; j += kStep) {
      typename L::V zv[PC][kJ];
      for (int c = 0; c < PC; ++c)
        for (int v = 0; v < kJ; ++v) zv[c][v] = L::load(zs + c * n_pad + j + v * L::W);
      for (int64_t r = 0; r < rows; ++r) {
        typename L::V dv[kJ];
        for (int v = 0; v < kJ; ++v) dv[v] = L::load(d + r * ld + j + v * L::W);
        for (int c = 0; c < PC; ++c) {
          const auto yv = L::set1(y_out[r * PC + c]);
          for (int v = 0; v < kJ; ++v) zv[c][v] = L::fma(yv, dv[v], zv[c][v]);
        }
      }
      for (int c = 0; c < PC; ++c)
        for (int v = 0; v < kJ; ++v) L::store(zs + c * n_pad + j + v * L::W, zv[c][v]);
    }
  }

  void reduce(const Acc* partial, int64_t slabs, int64_t j, Acc* z) const {
    for (int c = 0; c < PC; ++c) {
      Acc sum = 0;
      for (int64_t s = 0; s < slabs; ++s) sum += partial[(s * PC + c) * n_pad + j];
      z[j * PC + c] = sum;
    }
  }
};

// ---- the pass -----------------------------------------------------------------
// Slabs: one per kSlabRows rows, at most kMaxSlabs, and few enough that the Z partials
// (slabs * partial accumulators of about n * width) stay within a quarter of the bytes read.
// Set by the sizes only, so the order of every sum is the same on any number of threads.
int64_t slab_count(int64_t m, int64_t width, int64_t in_bytes, int64_t acc_bytes) {
  const int64_t by_rows = (m + kSlabRows - 1) / kSlabRows;
  const int64_t by_memory = m * in_bytes / (4 * width * acc_bytes);
  return std::clamp<int64_t>(std::min(by_rows, by_memory), 1, kMaxSlabs);
}

template <typename In, typename Acc, typename Kernel>
double product_pass(const In* a, const In* b, ElemType type, int64_t m, int64_t n, int64_t sa, int64_t sb,
                    const Kernel& kernel, int64_t p, Acc* y, Acc* z) {
  const int64_t part = kernel.partial_size();
  const int64_t slabs = slab_count(m, (part + n - 1) / n, (b ? 2 : 1) * static_cast<int64_t>(sizeof(In)), sizeof(Acc));
  const int64_t slab_rows = (m + slabs - 1) / slabs;
  const int64_t ld = (n + 31) / 32 * 32 + 16;  // >= every kernel's padded n; the tail stays zero
  std::vector<Acc> rowsq(m);
  std::unique_ptr<Acc[]> partial(new Acc[slabs * part]);  // each slab's thread zeroes its own

#pragma omp parallel
  {
    std::vector<Acc> block(kGroup * ld, Acc(0)), scratch(kernel.scratch_size());
#pragma omp for schedule(dynamic, 1)
    for (int64_t s = 0; s < slabs; ++s) {
      Acc* zs = partial.get() + s * part;
      std::fill(zs, zs + part, Acc(0));
      const int64_t end = std::min(m, (s + 1) * slab_rows);
      for (int64_t r0 = s * slab_rows; r0 < end; r0 += kGroup) {
        const int64_t rows = std::min<int64_t>(kGroup, end - r0);
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t row = r0 + i, ahead = row + kGroup;
          rowsq[row] = delta_row<In, Acc>(a + row * sa, b ? b + row * sb : nullptr, type, n, block.data() + i * ld,
                                          ahead < end ? a + ahead * sa : nullptr,
                                          ahead < end && b ? b + ahead * sb : nullptr);
        }
        kernel.group(block.data(), ld, rows, scratch.data(), y + r0 * p, zs);
      }
    }
#pragma omp for schedule(static)
    for (int64_t j = 0; j < n; ++j) kernel.reduce(partial.get(), slabs, j, z);
  }
  double frob2 = 0.0;
  for (int64_t i = 0; i < m; ++i) frob2 += static_cast<double>(rowsq[i]);
  return frob2;
}

template <typename In, typename Acc, typename Kernel>
double run_pass(const In* a, const In* b, ElemType type, int64_t m, int64_t n, int64_t sa, int64_t sb,
                const Acc* x, int64_t p, Acc* y, Acc* z) {
  return product_pass<In, Acc>(a, b, type, m, n, sa, sb, Kernel(x, n, p), p, y, z);
}

template <typename In, typename Acc>
double product_typed(const In* a, const In* b, ElemType type, int64_t m, int64_t n, int64_t sa, int64_t sb,
                     const Acc* x, int64_t p, Acc* y, Acc* z) {
  // p <= 32 (ops/delta_products.py splits wider blocks): rows on the lanes up to 4 columns,
  // then 1 to 32 / W registers a row.
  static_assert(8 * Lanes<Acc>::W >= 32, "8 registers must hold 32 columns");
  switch (p) {
    case 1: return run_pass<In, Acc, RowsOnLanes<Acc, 1>>(a, b, type, m, n, sa, sb, x, p, y, z);
    case 2: return run_pass<In, Acc, RowsOnLanes<Acc, 2>>(a, b, type, m, n, sa, sb, x, p, y, z);
    case 3: return run_pass<In, Acc, RowsOnLanes<Acc, 3>>(a, b, type, m, n, sa, sb, x, p, y, z);
    case 4: return run_pass<In, Acc, RowsOnLanes<Acc, 4>>(a, b, type, m, n, sa, sb, x, p, y, z);
    default: break;
  }
  switch ((p + Lanes<Acc>::W - 1) / Lanes<Acc>::W) {
    case 1: return run_pass<In, Acc, ColumnsOnLanes<Acc, 1>>(a, b, type, m, n, sa, sb, x, p, y, z);
    case 2: return run_pass<In, Acc, ColumnsOnLanes<Acc, 2>>(a, b, type, m, n, sa, sb, x, p, y, z);
    case 3: return run_pass<In, Acc, ColumnsOnLanes<Acc, 3>>(a, b, type, m, n, sa, sb, x, p, y, z);
    case 4: return run_pass<In, Acc, ColumnsOnLanes<Acc, 4>>(a, b, type, m, n, sa, sb, x, p, y, z);
    case 5: return run_pass<In, Acc, ColumnsOnLanes<Acc, 5>>(a, b, type, m, n, sa, sb, x, p, y, z);
    case 6: return run_pass<In, Acc, ColumnsOnLanes<Acc, 6>>(a, b, type, m, n, sa, sb, x, p, y, z);
    case 7: return run_pass<In, Acc, ColumnsOnLanes<Acc, 7>>(a, b, type, m, n, sa, sb, x, p, y, z);
    default: return run_pass<In, Acc, ColumnsOnLanes<Acc, 8>>(a, b, type, m, n, sa, sb, x, p, y, z);
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

double delta_products(const void* after, const void* before, ElemType type, int64_t m, int64_t n,
                          int64_t after_stride, int64_t before_stride, const float* x, int64_t p, float* y,
                          float* z) {
  return product<float>(after, before, type, m, n, after_stride, before_stride, x, p, y, z);
}

double delta_products(const void* after, const void* before, ElemType type, int64_t m, int64_t n,
                          int64_t after_stride, int64_t before_stride, const double* x, int64_t p, double* y,
                          double* z) {
  return product<double>(after, before, type, m, n, after_stride, before_stride, x, p, y, z);
}

}  // namespace rlsignals::cpu
