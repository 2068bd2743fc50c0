// CUDA kernels for unit_sums (see unit_sums.cuh for the math and the shapes).
//
// One thread block per range (a grid-stride loop over ranges past 2^31 - 1).
// The block's threads cover the d columns of a row: thread t owns the vectors
// t, t + blockDim, ..., t + (ITEMS - 1) * blockDim, a vector being 16 bytes
// (4 fp32 or 8 fp16/bf16 elements) when d, the row stride and the pointers
// allow it, else one element. The range's fp32 sums for those columns stay in
// registers (ITEMS * VEC floats per thread) for the whole range.
//
// The range is walked ROWS rows per round. A round issues all ROWS * ITEMS
// loads first (streaming loads: the data is read once), then sums each row's
// squares in fp32, and reduces the ROWS sums over the block at once: a
// transposing butterfly inside each warp (ROWS - 1 + log2(32 / ROWS) shuffles
// for all ROWS rows), one shared-memory exchange and one __syncthreads (the
// exchange buffer alternates between rounds, so no second barrier is needed),
// then a short butterfly that leaves every thread with all ROWS norms. Each
// thread then adds x * inv to its accumulators, rows in order. The reduction
// order is fixed, so results are deterministic.
//
// Shapes (vectors per row -> template), chosen on the host; the launch bounds
// cap registers at 64 per thread so that the blocks per SM below fit, and
// ptxas reports no spills for any instantiation (tests/test_cuda_compile.py):
//
//   vectors per row  ITEMS  ROWS  threads <=  blocks/SM  16-byte loads in flight per SM
//   <= 256           1      8     256         4          up to 1024 thr * 8 = 128 KB
//   <= 1024          2      2     512         2          1024 thr * 4 = 64 KB
//   <= 2048          4      1     512         2          1024 thr * 4 = 64 KB
//   <= 4096          4      1     1024        1          1024 thr * 4 = 64 KB
//   more             any-d kernel (512 threads, sums kept in the output row)
//
// Hopper needs about 20-30 KB in flight per SM to saturate HBM, so every row
// of the table has margin; with two or more blocks per SM one block's loads
// overlap another's barrier. With 16-byte vectors the register path covers
// d <= 32768 for fp16/bf16 and d <= 16384 for fp32 (the last row has a single
// block per SM, so the memory pipe idles during its barriers: expect less).
// Without 16-byte vectors (d * elem_size not a multiple of 16, or a pointer or
// the row stride misaligned) the same table runs on single elements, up to
// d = 4096. Past the table the any-d kernel reads each row twice (the second
// time from L2) and adds into the output row, each column owned by one thread:
// correct for any shape and alignment, but slower.
//
// Rows whose squared norm overflows fp32 (entries above about 1.8e19 / sqrt(d),
// as fp32 and bf16 allow) are normalised as (x * 2^-100) / ||x * 2^-100||
// (exact scaling; two multiplies, since 1 / ||x|| itself may be subnormal and
// --use_fast_math flushes those to zero). The any-d kernel does it in place,
// with a third read of such a row. The register path only notes that a range
// had such a row (sqsums[r] = kRedo, an otherwise impossible +inf) and a
// second launch of the any-d kernel, in REDO_ONLY mode, recomputes exactly
// those ranges; every other block of it returns at once, so ordinary inputs
// pay one nearly empty launch and no registers.
//
// Numerics follow the CPU kernel: the norm with __fsqrt_rn and the inverse
// with __frcp_rn (correctly rounded even under --use_fast_math, which still
// flushes subnormals to zero), max(norm, eps) written so that a NaN norm stays
// NaN, and x * inv added to the fp32 sums with an FMA.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <climits>
#include <cstdint>

#include "elem_types.cuh"
#include "unit_sums.cuh"

namespace rlsignals::cuda {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarpSize = 32;
constexpr int kAnyThreads = 512;  // block size of the any-d kernel
constexpr float kDownscale = 0x1p-100f;  // rows whose squared norm overflows are scaled by it
constexpr float kRedo = __builtin_huge_valf();  // sqsums mark of a range the register path left to redo

// The factor a row is scaled by before it is normalised: 2^-100 when its
// squared norm overflowed fp32 (or it holds an inf: the result is the same), else 1.
__device__ __forceinline__ float row_scale(float sumsq) { return sumsq > FLT_MAX ? kDownscale : 1.0f; }

// How a thread reads and writes one "vector" of VEC elements: 16 bytes, or one element.
template <class E, int VEC>
struct Access {
  static_assert(VEC * sizeof(typename E::Storage) == 16, "vectors are 16 bytes");
  using Raw = uint4;
  static __device__ __forceinline__ Raw zero() { return make_uint4(0u, 0u, 0u, 0u); }
  static __device__ __forceinline__ Raw load(const typename E::Storage* p) {
    return __ldcs(reinterpret_cast<const uint4*>(p));
  }
  static __device__ __forceinline__ void unpack(const Raw& raw, float (&out)[VEC]) { E::unpack(raw, out); }
  // An empty asm that "changes" the raw bits: the compiler must unpack them
  // again instead of keeping VEC unpacked floats alive across the reduction.
  static __device__ __forceinline__ void launder(Raw& raw) {
    asm volatile("" : "+r"(raw.x), "+r"(raw.y), "+r"(raw.z), "+r"(raw.w));
  }
  static __device__ __forceinline__ void store(float* p, const float (&v)[VEC]) {
#pragma unroll
    for (int i = 0; i < VEC; i += 4) {
      *reinterpret_cast<float4*>(p + i) = make_float4(v[i], v[i + 1], v[i + 2], v[i + 3]);
    }
  }
};

template <class E>
struct Access<E, 1> {
  using Raw = typename E::Storage;
  static __device__ __forceinline__ Raw zero() { return Raw(0); }
  static __device__ __forceinline__ Raw load(const Raw* p) { return __ldcs(p); }
  static __device__ __forceinline__ void unpack(const Raw& raw, float (&out)[1]) { out[0] = E::to_float(raw); }
  static __device__ __forceinline__ void launder(Raw&) {}
  static __device__ __forceinline__ void store(float* p, const float (&v)[1]) { *p = v[0]; }
};

// ---------------------------------------------------------------- reductions

__host__ __device__ constexpr int log2_exact(int n) { return n <= 1 ? 0 : 1 + log2_exact(n / 2); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset >= 1; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;  // the same bits in every lane (each step adds the same two values)
}

// Sums v[0..ROWS) over the whole block; on return every thread holds all ROWS
// totals. `part` is this round's half of the exchange buffer: ROWS * SLOTS
// floats, SLOTS >= the warps of the block and ROWS * SLOTS a multiple of 32;
// the slots of warps the block does not have must hold zeros. One __syncthreads.
template <int ROWS, int SLOTS>
__device__ __forceinline__ void block_sum_rows(float (&v)[ROWS], float* part, int lane, int warp) {
  constexpr int kLogRows = log2_exact(ROWS);
  constexpr int kGroup = kWarpSize / ROWS;           // lanes that end up holding one row
  constexpr int kPerLane = ROWS * SLOTS / kWarpSize;  // partials each lane reads back
  static_assert((1 << kLogRows) == ROWS && ROWS <= kWarpSize, "ROWS must be a power of two <= 32");
  static_assert(kPerLane >= 1 && kPerLane * kWarpSize == ROWS * SLOTS, "ROWS * SLOTS must be a multiple of 32");

  // Transposing butterfly: at step s the lanes whose bit (4 - s) is set keep
  // the upper half of their rows and send the lower half, the others the
  // reverse, halving the values per lane. Lane l ends with the warp's total of
  // row l >> (5 - kLogRows) in v[0], after log2(32 / ROWS) plain steps.
#pragma unroll
  for (int s = 0; s < kLogRows; ++s) {
    const int offset = (kWarpSize / 2) >> s;
    const int half = ROWS >> (s + 1);
    const bool upper = (lane & offset) != 0;
#pragma unroll
    for (int i = 0; i < half; ++i) {
      const float send = upper ? v[i] : v[i + half];
      const float keep = upper ? v[i + half] : v[i];
      v[i] = keep + __shfl_xor_sync(kFullMask, send, offset);
    }
  }
#pragma unroll
  for (int offset = kGroup / 2; offset >= 1; offset /= 2) v[0] += __shfl_xor_sync(kFullMask, v[0], offset);

  const int row = lane / kGroup;
  if (lane % kGroup == 0) part[row * SLOTS + warp] = v[0];
  __syncthreads();

  // Lane l reads kPerLane consecutive partials, all of row l / kGroup (a row's
  // SLOTS partials are read by kGroup = SLOTS / kPerLane lanes), sums them in
  // order, and the group's butterfly gives each of its lanes the row total.
  float t = 0.0f;
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) t += part[lane * kPerLane + k];
#pragma unroll
  for (int offset = kGroup / 2; offset >= 1; offset /= 2) t += __shfl_xor_sync(kFullMask, t, offset);
  if constexpr (ROWS == 1) {
    v[0] = t;
  } else {
#pragma unroll
    for (int rr = 0; rr < ROWS; ++rr) v[rr] = __shfl_sync(kFullMask, t, rr * kGroup);
  }
}

// 1 / max(norm, eps); a NaN norm gives NaN (as std::max(norm, eps) on the CPU).
__device__ __forceinline__ float inverse_norm(float sumsq, float eps) {
  const float norm = __fsqrt_rn(sumsq);
  return __frcp_rn(norm < eps ? eps : norm);
}

// ---------------------------------------------------------------- kernels

// Register path: a thread's accumulators are acc[ITEMS][VEC]; blockDim.x is a
// multiple of 32, at most MAX_THREADS, and blockDim.x * ITEMS * VEC >= d.
template <class E, int VEC, int ITEMS, int ROWS, int MAX_THREADS, int MIN_BLOCKS>
__global__ void __launch_bounds__(MAX_THREADS, MIN_BLOCKS)
    unit_sums_rows_kernel(const typename E::Storage* __restrict__ hidden, int64_t d, int64_t row_stride,
                          const int64_t* __restrict__ offsets, int64_t num_ranges, float eps,
                          float* __restrict__ sums, float* __restrict__ sqsums) {
  using A = Access<E, VEC>;
  // Exchange slots per row: one per warp, at least 32 / ROWS so that the
  // ROWS * kSlots partials fill whole warps when they are read back.
  constexpr int kSlots = MAX_THREADS / kWarpSize > kWarpSize / ROWS ? MAX_THREADS / kWarpSize : kWarpSize / ROWS;
  __shared__ __align__(16) float partials[2][ROWS * kSlots];
  for (int i = threadIdx.x; i < 2 * ROWS * kSlots; i += blockDim.x) (&partials[0][0])[i] = 0.0f;
  __syncthreads();

  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  // Item k of this thread is vector threadIdx.x + k * blockDim.x of a row, at
  // element column col0 + k * step (int: d <= 4096 * VEC here).
  const int num_vecs = static_cast<int>(d / VEC);
  const int col0 = static_cast<int>(threadIdx.x) * VEC;
  const int step = static_cast<int>(blockDim.x) * VEC;
  int buf = 0;  // alternates every round, across ranges too
  for (int64_t r = blockIdx.x; r < num_ranges; r += gridDim.x) {
    const int64_t begin = offsets[r];
    const int64_t end = offsets[r + 1];
    float acc[ITEMS][VEC];
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc[k][j] = 0.0f;
    }
    float sq = 0.0f;
    bool overflow = false;  // some row's squared norm overflowed fp32: the range is redone

    for (int64_t first = begin; first < end; first += ROWS) {
      typename A::Raw raw[ROWS][ITEMS];
#pragma unroll
      for (int rr = 0; rr < ROWS; ++rr) {
        const int64_t row = first + rr;
        const typename E::Storage* p = hidden + (row < end ? row : first) * row_stride + col0;
#pragma unroll
        for (int k = 0; k < ITEMS; ++k) {
          const bool ok = row < end && static_cast<int>(threadIdx.x) + k * static_cast<int>(blockDim.x) < num_vecs;
          raw[rr][k] = ok ? A::load(p + k * step) : A::zero();
        }
      }

      float ss[ROWS];
#pragma unroll
      for (int rr = 0; rr < ROWS; ++rr) {
        ss[rr] = 0.0f;
#pragma unroll
        for (int k = 0; k < ITEMS; ++k) {
          float x[VEC];
          A::unpack(raw[rr][k], x);
#pragma unroll
          for (int j = 0; j < VEC; ++j) ss[rr] = fmaf(x[j], x[j], ss[rr]);
        }
      }
      block_sum_rows<ROWS, kSlots>(ss, partials[buf], lane, warp);
      buf ^= 1;
#pragma unroll
      for (int rr = 0; rr < ROWS; ++rr) overflow |= ss[rr] > FLT_MAX;  // block-uniform
#pragma unroll
      for (int rr = 0; rr < ROWS; ++rr) {
#pragma unroll
        for (int k = 0; k < ITEMS; ++k) A::launder(raw[rr][k]);
      }

#pragma unroll
      for (int rr = 0; rr < ROWS; ++rr) {
        const float inv = first + rr < end ? inverse_norm(ss[rr], eps) : 0.0f;
#pragma unroll
        for (int k = 0; k < ITEMS; ++k) {
          float x[VEC];
          A::unpack(raw[rr][k], x);
#pragma unroll
          for (int j = 0; j < VEC; ++j) acc[k][j] = fmaf(x[j], inv, acc[k][j]);
        }
        sq += ss[rr] * inv * inv;  // rows past the end: 0 * 0 * 0
      }
    }

    float* out = sums + r * d + col0;
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
      if (static_cast<int>(threadIdx.x) + k * static_cast<int>(blockDim.x) < num_vecs) A::store(out + k * step, acc[k]);
    }
    if (threadIdx.x == 0) sqsums[r] = overflow ? kRedo : sq;
  }
}

// Any d, any alignment; blockDim.x == kAnyThreads. Two passes per row (squares,
// then x * inv added to the output row, column c owned by thread c % blockDim).
// REDO_ONLY: only the ranges whose sqsums hold kRedo (left by the register path).
template <class E, bool REDO_ONLY>
__global__ void __launch_bounds__(kAnyThreads)
    unit_sums_any_kernel(const typename E::Storage* __restrict__ hidden, int64_t d, int64_t row_stride,
                         const int64_t* __restrict__ offsets, int64_t num_ranges, float eps,
                         float* __restrict__ sums, float* __restrict__ sqsums) {
  __shared__ float partials[2][kWarpSize];  // slots of absent warps stay 0
  for (int i = threadIdx.x; i < 2 * kWarpSize; i += blockDim.x) (&partials[0][0])[i] = 0.0f;
  __syncthreads();

  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  int buf = 0;
  for (int64_t r = blockIdx.x; r < num_ranges; r += gridDim.x) {
    if constexpr (REDO_ONLY) {
      if (sqsums[r] != kRedo) continue;  // every thread reads it before thread 0 may overwrite it
      __syncthreads();
    }
    const int64_t begin = offsets[r];
    const int64_t end = offsets[r + 1];
    float* out = sums + r * d;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) out[c] = 0.0f;
    float sq = 0.0f;
    for (int64_t row = begin; row < end; ++row) {
      const typename E::Storage* p = hidden + row * row_stride;
      float ss = 0.0f;
#pragma unroll 4
      for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
        const float x = E::to_float(p[c]);
        ss = fmaf(x, x, ss);
      }
      ss = warp_sum(ss);
      if (lane == 0) partials[buf][warp] = ss;
      __syncthreads();
      float total = warp_sum(partials[buf][lane]);
      buf ^= 1;
      const float scale = row_scale(total);
      if (scale != 1.0f) {  // block-uniform; a third read of the row
        ss = 0.0f;
        for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
          const float x = E::to_float(p[c]) * scale;
          ss = fmaf(x, x, ss);
        }
        ss = warp_sum(ss);
        if (lane == 0) partials[buf][warp] = ss;
        __syncthreads();
        total = warp_sum(partials[buf][lane]);
        buf ^= 1;
      }
      const float inv = inverse_norm(total, eps);
#pragma unroll 4
      for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
        out[c] = fmaf(E::to_float(p[c]) * scale, inv, out[c]);
      }
      sq += total * inv * inv;
    }
    if (threadIdx.x == 0) sqsums[r] = sq;
  }
}

// ---------------------------------------------------------------- host side

struct Args {
  const void* hidden;
  int64_t d;
  int64_t row_stride;
  const int64_t* offsets;
  int64_t num_ranges;
  float eps;
  float* sums;
  float* sqsums;
  cudaStream_t stream;
};

unsigned grid_size(int64_t num_ranges) {
  return static_cast<unsigned>(num_ranges < INT_MAX ? num_ranges : INT_MAX);
}

template <class E, bool REDO_ONLY = false>
cudaError_t launch_any(const Args& a) {
  unit_sums_any_kernel<E, REDO_ONLY><<<grid_size(a.num_ranges), kAnyThreads, 0, a.stream>>>(
      static_cast<const typename E::Storage*>(a.hidden), a.d, a.row_stride, a.offsets, a.num_ranges, a.eps,
      a.sums, a.sqsums);
  return cudaGetLastError();
}

template <class E, int VEC, int ITEMS, int ROWS, int MAX_THREADS, int MIN_BLOCKS>
cudaError_t launch_rows(const Args& a, int64_t num_vecs) {
  const int64_t per_thread = (num_vecs + ITEMS - 1) / ITEMS;
  int64_t threads = (per_thread + kWarpSize - 1) / kWarpSize * kWarpSize;
  if (threads < kWarpSize) threads = kWarpSize;
  if (threads > MAX_THREADS) return cudaErrorInvalidValue;  // the caller's table is wrong
  unit_sums_rows_kernel<E, VEC, ITEMS, ROWS, MAX_THREADS, MIN_BLOCKS>
      <<<grid_size(a.num_ranges), static_cast<unsigned>(threads), 0, a.stream>>>(
          static_cast<const typename E::Storage*>(a.hidden), a.d, a.row_stride, a.offsets, a.num_ranges, a.eps,
          a.sums, a.sqsums);
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? launch_any<E, true>(a) : err;  // the ranges with an overflowing row
}


// The table in the comment at the top of this file.
template <class E, int VEC>
cudaError_t launch_shape(const Args& a) {
  const int64_t num_vecs = a.d / VEC;
  //                                          ITEMS ROWS threads blocks/SM
  if (num_vecs <= 256) return launch_rows<E, VEC, 1, 8, 256, 4>(a, num_vecs);
  if (num_vecs <= 1024) return launch_rows<E, VEC, 2, 2, 512, 2>(a, num_vecs);
  if (num_vecs <= 2048) return launch_rows<E, VEC, 4, 1, 512, 2>(a, num_vecs);
  if (num_vecs <= 4096) return launch_rows<E, VEC, 4, 1, 1024, 1>(a, num_vecs);
  return launch_any<E>(a);
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <class E>
cudaError_t launch_typed(const Args& a) {
  constexpr int kVec = 16 / sizeof(typename E::Storage);
  const bool vectors = a.d % kVec == 0 && a.row_stride % kVec == 0 && aligned16(a.hidden) && aligned16(a.sums);
  return vectors ? launch_shape<E, kVec>(a) : launch_shape<E, 1>(a);
}

}  // namespace

cudaError_t launch_unit_sums(const void* hidden, ElemType type, int64_t d, int64_t row_stride,
                             const int64_t* offsets, int64_t num_ranges, float eps, float* sums,
                             float* sqsums, cudaStream_t stream) {
  if (d < 0 || num_ranges < 0) return cudaErrorInvalidValue;
  if (num_ranges == 0) return cudaSuccess;
  const Args a{hidden, d, row_stride, offsets, num_ranges, eps, sums, sqsums, stream};
  switch (type) {
    case ElemType::kFloat32: return launch_typed<F32>(a);
    case ElemType::kFloat16: return launch_typed<F16>(a);
    case ElemType::kBFloat16: return launch_typed<BF16>(a);
  }
  return cudaErrorInvalidValue;
}

}  // namespace rlsignals::cuda
