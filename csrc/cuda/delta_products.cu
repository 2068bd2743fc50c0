// CUDA kernels for delta_products (see delta_products.cuh for the math,
// the shapes and the rounding contract).
//
// Work split. The m rows of each member are cut into S = min(ceil(m / 128), 64)
// slabs of ceil(m / S) rows (S depends on m only). The grid is (S, members):
// one block of 256 threads per slab and member (members past 65535 loop over
// grid.y). A block walks its slab in row blocks of kRows = 128 rows; for each
// row block, with D = the row block of dW in Acc:
//
//   walk 1, column tiles of kCols = 64 left to right: load the D tile (from
//     DRAM), convert it to Acc into shared memory, summing the squares of each
//     row; load the matching 64 rows of X; Y_rows += D_tile X_tile. At the
//     end, Y_rows (128 x P) goes to y and to shared memory, and the row
//     block's squares are added to the slab's frob2 partial.
//   walk 2, the same tiles right to left (the tiles read last in walk 1 come
//     first): load the tile again, Z_tile = D_tile^T Y_rows, added into the
//     slab's partial z [n, p].
//
// Read once. Only walk 1 should reach DRAM: between its read of a tile and
// walk 2's, a block reads the rest of its 128 rows, so all walk-2 reads hit L2
// while the resident blocks' row blocks fit in it together, i.e. while
// 2 x SMs x 128 x n x elem_size <= L2 (n up to about 700 for bf16 on an H100's
// 50 MB). Past that, the reverse order keeps the most recently read tiles
// (about an L2's worth across the GPU) hitting, and the rest of walk 2 reads
// DRAM again.
//
// Tiles. Global loads are 16-byte vectors (4 fp32 or 8 fp16/bf16 elements,
// ld.global.cg in walk 1, ld.global.cs in walk 2: the data is not read a third
// time) when the member's pointers and row strides are 16-byte aligned, single
// elements otherwise and at the right edge. The D tile lives in shared memory
// in Acc, rows padded so that the 16-byte reads below are conflict-free.
// Padded p: P = 8, 16 or 32 columns (X's extra columns are zeros, so Y's and
// Z's are too and are never stored).
//
// Products. Each thread keeps a 4 x 8 tile of results in registers (32 Acc)
// and reads its operands from shared memory with 16-byte loads: 3 (fp32) or
// 6 (fp64) loads per 32 multiply-adds. The 128 x P (walk 1) or 64 x P (walk 2)
// results need fewer tiles than threads, so the reduction dimension is split
// KS ways (the 64 columns of a tile in walk 1, the 128 rows in walk 2); the KS
// partial tiles are written to shared memory and summed in ks order.
//
// Determinism. Every sum has a fixed order: a thread's products in order, the
// KS partials in ks order, the row blocks of a slab in order (the slab's z
// partial is read, added to and written back by the same thread), and the slab
// partials in slab order (sum_slabs_kernel). Row squares: a thread's columns in
// order, then a fixed butterfly over the threads of the row; rows are added in
// double with a fixed butterfly per row block, row blocks in order.
//
// Workspace. With S == 1 the block writes z and frob2 directly. Otherwise the
// partials go to the workspace, per launched group of members:
//   [group x S frob2 partials, double; each block's S values padded to 16 bytes]
//   [group x S x n x p z partials, Acc]
// and sum_slabs_kernel adds them into z and frob2. The z partials are written
// and read once: S n p sizeof(Acc) bytes each way per block, i.e. for
// m <= 8192 a fraction p sizeof(Acc) / (128 elem_size) of the input bytes
// (1/4 for p = 16 and fp32 sums of bf16), less for larger m.
//
// Resources: 256 threads and at most 128 registers (two blocks per SM), and
// (kTileElems + 128 P + 128) Acc of dynamic shared memory: 52.5 KiB for fp32
// and 101 KiB for fp64 at P = 32 (44.5 / 85 KiB at P = 16), so that fp64 at
// P >= 16 runs one block per SM on sm_80 (164 KiB of shared memory per SM).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "delta_products.cuh"
#include "elem_types.cuh"

namespace rlsignals::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kRows = 128;  // rows of a row block (and of a slab before the slab cap)
constexpr int kCols = 64;   // columns of a tile
constexpr int64_t kSlabRows = kRows;
constexpr int64_t kMaxSlabs = 64;
constexpr int kMaxGridY = 65535;
constexpr unsigned kFullMask = 0xffffffffu;

// Walk 1 reads through L2 only (the tile is read again in walk 2); walk 2 streams.
template <bool kLastUse, typename T>
__device__ __forceinline__ T load_global(const T* p) {
  if constexpr (kLastUse) {
    return __ldcs(p);
  } else {
    return __ldcg(p);
  }
}

// ---------------------------------------------------------------- accumulation type

template <typename Acc>
constexpr int kPerVec = 16 / static_cast<int>(sizeof(Acc));  // Acc values per 16 bytes
// Row pitch of the D tile and of a reduction slot: 16 bytes of padding, so that
// 8 threads reading 16 bytes from 8 consecutive rows (or slots) hit distinct banks.
template <typename Acc>
constexpr int kTilePitch = kCols + kPerVec<Acc>;
template <typename Acc>
constexpr int kSlotPitch = 32 + kPerVec<Acc>;
// The shared region that holds the D tile, or the threads' 32-value reduction slots.
template <typename Acc>
constexpr int kTileElems =
    kRows * kTilePitch<Acc> > kThreads * kSlotPitch<Acc> ? kRows * kTilePitch<Acc> : kThreads * kSlotPitch<Acc>;

// Unroll factors of the walk-1 and walk-2 product loops. Under the
// 128-register cap of two blocks per SM, fp64's 64 accumulator registers
// leave room for fewer loads in flight (tests/test_cuda_compile.py checks that
// no instantiation spills).
template <typename Acc>
constexpr int kUnroll1 = sizeof(Acc) == 4 ? 2 : 1;
template <typename Acc>
constexpr int kUnroll2 = sizeof(Acc) == 4 ? 4 : 2;

template <typename Acc>
__device__ __forceinline__ Acc fmadd(Acc a, Acc b, Acc c) {
  if constexpr (sizeof(Acc) == 4) {
    return __fmaf_rn(a, b, c);
  } else {
    return __fma_rn(a, b, c);
  }
}

template <typename Acc>
__device__ __forceinline__ Acc quiet_nan() {
  if constexpr (sizeof(Acc) == 4) {
    return __int_as_float(0x7fc00000);
  } else {
    return __longlong_as_double(0x7ff8000000000000ll);
  }
}

// N values from / to 16-byte aligned shared memory, 16 bytes at a time.
template <int N, typename Acc>
__device__ __forceinline__ void load_shared(const Acc* p, Acc (&out)[N]) {
  static_assert(N % kPerVec<Acc> == 0, "whole 16-byte vectors");
#pragma unroll
  for (int i = 0; i < N; i += kPerVec<Acc>) {
    if constexpr (sizeof(Acc) == 4) {
      const float4 v = *reinterpret_cast<const float4*>(p + i);
      out[i] = v.x;
      out[i + 1] = v.y;
      out[i + 2] = v.z;
      out[i + 3] = v.w;
    } else {
      const double2 v = *reinterpret_cast<const double2*>(p + i);
      out[i] = v.x;
      out[i + 1] = v.y;
    }
  }
}

template <int N, typename Acc>
__device__ __forceinline__ void store_shared(Acc* p, const Acc (&v)[N]) {
  static_assert(N % kPerVec<Acc> == 0, "whole 16-byte vectors");
#pragma unroll
  for (int i = 0; i < N; i += kPerVec<Acc>) {
    if constexpr (sizeof(Acc) == 4) {
      *reinterpret_cast<float4*>(p + i) = make_float4(v[i], v[i + 1], v[i + 2], v[i + 3]);
    } else {
      *reinterpret_cast<double2*>(p + i) = make_double2(v[i], v[i + 1]);
    }
  }
}

// ---------------------------------------------------------------- tiles of D

// The row block of one member: rows [0, rows) valid, n columns.
template <class E>
struct RowBlock {
  const typename E::Storage* a;  // after, first row of the block
  const typename E::Storage* b;  // before, or null
  int64_t a_stride;
  int64_t b_stride;
  int64_t n;
  int rows;
  bool vec;  // 16-byte loads allowed (pointers and strides aligned)
};

// Thread t converts two 16-byte chunks in each of kRowsPerThread rows of the
// tile: chunks cc and cc + kThreadsPerRow (cc = t % kThreadsPerRow) of rows
// t / kThreadsPerRow + u * kRowStep. The kThreadsPerRow threads of a row read
// 64 (16-bit) or 128 (fp32) contiguous bytes per load.
template <class E>
constexpr int kThreadsPerRow = kCols / E::kVec / 2;
template <class E>
constexpr int kRowStep = kThreads / kThreadsPerRow<E>;
template <class E>
constexpr int kRowsPerThread = kRows / kRowStep<E>;

// threadIdx.x through an empty asm statement, so that the index and address
// arithmetic built on it is redone at each use: the compiler would otherwise
// hoist it out of the walks and hold dozens of addresses in registers.
__device__ __forceinline__ int thread_index() {
  int t = static_cast<int>(threadIdx.x);
  asm volatile("" : "+r"(t));
  return t;
}

// D[:, j0 : j0 + kCols] of the row block into `tile` (Acc, pitch kTilePitch),
// zeros outside the matrix. Walk 1 (!kLastUse) adds the squares of the
// thread's elements of its row u into sq[u]. The thread's chunks (u, h) are
// taken kGroup at a time, loads first, to bound the registers they hold.
template <class E, typename Acc, bool kLastUse>
__device__ __forceinline__ void load_tile(const RowBlock<E>& blk, int64_t j0, Acc* tile,
                                          Acc (&sq)[kRowsPerThread<E>]) {
  constexpr int V = E::kVec;
  constexpr int kChunks = 2 * kRowsPerThread<E>;
  constexpr int kGroup = sizeof(Acc) == 4 ? 4 : 1;
  static_assert(kChunks % kGroup == 0, "whole groups");
  const int t = thread_index();
  const int row0 = t / kThreadsPerRow<E>;
  const int col0 = t % kThreadsPerRow<E> * V;
#pragma unroll
  for (int c0 = 0; c0 < kChunks; c0 += kGroup) {
    uint4 ra[kGroup], rb[kGroup];
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      const int row = row0 + (c0 + g) / 2 * kRowStep<E>;
      const int col = col0 + (c0 + g) % 2 * kThreadsPerRow<E> * V;
      const bool ok = blk.vec && row < blk.rows && j0 + col + V <= blk.n;
      ra[g] = make_uint4(0u, 0u, 0u, 0u);
      rb[g] = ra[g];
      if (ok) ra[g] = load_global<kLastUse>(reinterpret_cast<const uint4*>(blk.a + row * blk.a_stride + j0 + col));
      if (ok && blk.b) {
        rb[g] = load_global<kLastUse>(reinterpret_cast<const uint4*>(blk.b + row * blk.b_stride + j0 + col));
      }
    }
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      const int u = (c0 + g) / 2;
      const int row = row0 + u * kRowStep<E>;
      const int col = col0 + (c0 + g) % 2 * kThreadsPerRow<E> * V;
      Acc d[V];
      if (blk.vec && j0 + col + V <= blk.n) {  // rows past the block were loaded as zeros
        float fa[V], fb[V];
        E::unpack(ra[g], fa);
        E::unpack(rb[g], fb);
#pragma unroll
        for (int e = 0; e < V; ++e) d[e] = static_cast<Acc>(fa[e]) - static_cast<Acc>(fb[e]);
      } else {
#pragma unroll
        for (int e = 0; e < V; ++e) {
          d[e] = Acc(0);
          if (row < blk.rows && j0 + col + e < blk.n) {
            const int64_t at = j0 + col + e;
            const float va = E::to_float(load_global<kLastUse>(blk.a + row * blk.a_stride + at));
            const float vb = blk.b ? E::to_float(load_global<kLastUse>(blk.b + row * blk.b_stride + at)) : 0.0f;
            d[e] = static_cast<Acc>(va) - static_cast<Acc>(vb);
          }
        }
      }
      store_shared<V>(tile + row * kTilePitch<Acc> + col, d);
      if constexpr (!kLastUse) {
#pragma unroll
        for (int e = 0; e < V; ++e) sq[u] = fmadd(d[e], d[e], sq[u]);
      }
    }
  }
}

// X[j0 : j0 + kCols, :] into xs [kCols, P], zeros outside X: thread t loads
// column t % P of rows t / P + w * (kThreads / P).
template <typename Acc, int P>
__device__ __forceinline__ void load_x_tile(const Acc* x, int64_t n, int64_t p, int64_t j0, Acc* xs) {
  const int t = thread_index();
  const int c = t % P;
#pragma unroll
  for (int w = 0; w < kCols * P / kThreads; ++w) {
    const int k = t / P + w * (kThreads / P);
    xs[k * P + c] = j0 + k < n && c < p ? __ldg(x + (j0 + k) * p + c) : Acc(0);
  }
}

// ---------------------------------------------------------------- products

// Walk 1: threads are (ks, rg, cg); thread tile = rows rg + 32 q (q < 4) x
// columns 8 cg .. 8 cg + 7 of Y; it takes the 16-byte column vectors
// ks, ks + KS, ... of the tile. A warp shares ks and cg: X reads are broadcasts.
template <int P>
constexpr int kTiles1 = 32 * (P / 8);
template <int P>
constexpr int kSplit1 = kThreads / kTiles1<P>;

template <typename Acc, int P>
__device__ __forceinline__ void rows_times_x(const Acc* tile, const Acc* xs, Acc (&acc)[4][8]) {
  constexpr int KV = kPerVec<Acc>;
  constexpr int KS = kSplit1<P>;
  constexpr int kSteps = kCols / KV / KS;
  const int t = thread_index();
  const int ks = t / kTiles1<P>;
  const int rg = t % kTiles1<P> % 32;
  const int cg = t % kTiles1<P> / 32;
#pragma unroll kUnroll1<Acc>
  for (int s = 0; s < kSteps; ++s) {
    const int k0 = (ks + s * KS) * KV;
    Acc d[4][KV];
#pragma unroll
    for (int q = 0; q < 4; ++q) load_shared<KV>(tile + (rg + 32 * q) * kTilePitch<Acc> + k0, d[q]);
#pragma unroll
    for (int e = 0; e < KV; ++e) {
      Acc xr[8];
      load_shared<8>(xs + (k0 + e) * P + 8 * cg, xr);
#pragma unroll
      for (int q = 0; q < 4; ++q) {
#pragma unroll
        for (int c = 0; c < 8; ++c) acc[q][c] = fmadd(d[q][e], xr[c], acc[q][c]);
      }
    }
  }
}

// Walk 2: threads are (ks, cz, pg); thread tile = 4 columns of the tile (the
// 16-byte vectors cz and cz + 16 of a row for fp64) x columns 8 pg .. 8 pg + 7
// of Z; it takes the rows ks * R .. ks * R + R - 1 of the row block in order.
template <int P>
constexpr int kTiles2 = 16 * (P / 8);
template <int P>
constexpr int kSplit2 = kThreads / kTiles2<P>;

// Column of the tile that result i (< 4) of thread tile column group cz holds.
template <typename Acc>
__device__ __forceinline__ int tile_column(int cz, int i) {
  return (cz + 16 * (i / kPerVec<Acc>)) * kPerVec<Acc> + i % kPerVec<Acc>;
}

template <typename Acc, int P>
__device__ __forceinline__ void dt_times_y(const Acc* tile, const Acc* ys, Acc (&acc)[4][8]) {
  constexpr int KV = kPerVec<Acc>;
  constexpr int kRowsEach = kRows / kSplit2<P>;
  const int t = thread_index();
  const int ks = t / kTiles2<P>;
  const int cz = t % kTiles2<P> % 16;
  const int pg = t % kTiles2<P> / 16;
#pragma unroll kUnroll2<Acc>
  for (int rr = 0; rr < kRowsEach; ++rr) {
    const int r = ks * kRowsEach + rr;
    Acc d[4];
#pragma unroll
    for (int h = 0; h < 4 / KV; ++h) {
      Acc part[KV];
      load_shared<KV>(tile + r * kTilePitch<Acc> + (cz + 16 * h) * KV, part);
#pragma unroll
      for (int e = 0; e < KV; ++e) d[h * KV + e] = part[e];
    }
    Acc yr[8];
    load_shared<8>(ys + r * P + 8 * pg, yr);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int c = 0; c < 8; ++c) acc[i][c] = fmadd(d[i], yr[c], acc[i][c]);
    }
  }
}

// Thread t's 32 results into slot t (pitch kSlotPitch) of `slots`.
template <typename Acc>
__device__ __forceinline__ void store_slot(Acc* slots, const Acc (&acc)[4][8]) {
  Acc* slot = slots + thread_index() * kSlotPitch<Acc>;
#pragma unroll
  for (int q = 0; q < 4; ++q) store_shared<8>(slot + 8 * q, acc[q]);
}

// For each result v of each thread tile (tiles = kThreads / KS, the threads
// t = ks * tiles + tile), the sum over ks in order; emit(tile, v, sum).
template <typename Acc, int KS, class Emit>
__device__ __forceinline__ void sum_slots(const Acc* slots, Emit emit) {
  constexpr int kTiles = kThreads / KS;
  const int t = thread_index();
#pragma unroll 1
  for (int w = 0; w < 32 / KS; ++w) {
    const int o = t + w * kThreads;
    const int tile = o / 32;
    const int v = o % 32;
    Acc sum = slots[tile * kSlotPitch<Acc> + v];
#pragma unroll
    for (int ks = 1; ks < KS; ++ks) sum += slots[(ks * kTiles + tile) * kSlotPitch<Acc> + v];
    emit(tile, v, sum);
  }
}

// ---------------------------------------------------------------- the kernels

template <typename Acc>
struct Params {
  const void* after;
  const void* before;
  int64_t batch, m, n;
  int64_t a_batch, a_row, b_batch, b_row;
  const int64_t* members;
  int64_t num_members;  // in this launch
  const Acc* x;         // [num_members, n, p]
  int64_t p;
  Acc* y;         // [num_members, m, p]
  Acc* zpart;     // [num_members, slabs, n, p]: z itself when slabs == 1
  double* fpart;  // [num_members, slabs]: frob2 itself when slabs == 1
  int64_t slabs, slab_rows;
};

template <typename Acc, int P>
constexpr size_t kSharedBytes = (kTileElems<Acc> + kRows * P + kRows) * sizeof(Acc);

// One slab of one member. Shared memory: the D tile / reduction slots, then
// kRows x P values (the X tile in walk 1, Y_rows in walk 2), then kRows row squares.
template <class E, typename Acc, int P>
__device__ __forceinline__ void product_slab(const Params<Acc>& q, int64_t i, int64_t member, Acc* tile, Acc* blk,
                                             Acc* rowsq) {
  const int t = thread_index();
  const int64_t n = q.n, p = q.p;
  const int64_t s0 = blockIdx.x * q.slab_rows;
  const int64_t s1 = s0 + q.slab_rows < q.m ? s0 + q.slab_rows : q.m;  // never empty (see slab_shape)
  const Acc* x = q.x + i * n * p;
  Acc* y = q.y + i * q.m * p;
  Acc* zp = q.zpart + (i * q.slabs + blockIdx.x) * n * p;
  const auto* a = static_cast<const typename E::Storage*>(q.after) + member * q.a_batch;
  const auto* b = q.before ? static_cast<const typename E::Storage*>(q.before) + member * q.b_batch : nullptr;
  constexpr int V = E::kVec;
  const bool vec = reinterpret_cast<uintptr_t>(a) % 16 == 0 && q.a_row % V == 0 &&
                   (!b || (reinterpret_cast<uintptr_t>(b) % 16 == 0 && q.b_row % V == 0));
  const int64_t num_tiles = (n + kCols - 1) / kCols;
  double frob = 0.0;  // thread 0's: this slab's rows so far

  for (int64_t r0 = s0; r0 < s1; r0 += kRows) {
    const RowBlock<E> rb{a + r0 * q.a_row,
                         b ? b + r0 * q.b_row : nullptr,
                         q.a_row,
                         q.b_row,
                         n,
                         static_cast<int>(s1 - r0 < kRows ? s1 - r0 : kRows),
                         vec};

    // ---- walk 1: Y_rows = D X, row squares
    Acc acc[4][8];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
#pragma unroll
      for (int c = 0; c < 8; ++c) acc[r][c] = Acc(0);
    }
    Acc sq[kRowsPerThread<E>];
#pragma unroll
    for (int u = 0; u < kRowsPerThread<E>; ++u) sq[u] = Acc(0);
    for (int64_t jt = 0; jt < num_tiles; ++jt) {
      load_tile<E, Acc, false>(rb, jt * kCols, tile, sq);
      load_x_tile<Acc, P>(x, n, p, jt * kCols, blk);
      __syncthreads();
      rows_times_x<Acc, P>(tile, blk, acc);
      __syncthreads();
    }
    // Row squares: a butterfly over the kThreadsPerRow consecutive threads of a row.
#pragma unroll
    for (int u = 0; u < kRowsPerThread<E>; ++u) {
#pragma unroll
      for (int off = kThreadsPerRow<E> / 2; off >= 1; off /= 2) sq[u] += __shfl_xor_sync(kFullMask, sq[u], off);
      if (t % kThreadsPerRow<E> == 0) rowsq[t / kThreadsPerRow<E> + u * kRowStep<E>] = sq[u];
    }
    store_slot(tile, acc);
    __syncthreads();
    sum_slots<Acc, kSplit1<P>>(tile, [&](int tl, int v, Acc sum) {
      const int row = tl % 32 + 32 * (v / 8);
      const int col = 8 * (tl / 32) + v % 8;
      blk[row * P + col] = sum;
      if (row < rb.rows && col < p) y[(r0 + row) * p + col] = sum;
    });
    if (t < 32) {  // rows in double: 4 per lane in order, then a butterfly
      double part = 0.0;
#pragma unroll
      for (int r = 0; r < kRows / 32; ++r) part += static_cast<double>(rowsq[t + 32 * r]);
#pragma unroll
      for (int off = 16; off >= 1; off /= 2) part += __shfl_xor_sync(kFullMask, part, off);
      frob += part;
    }
    __syncthreads();

    // ---- walk 2, right to left: Z_partial += D^T Y_rows
    for (int64_t jt = num_tiles - 1; jt >= 0; --jt) {
      load_tile<E, Acc, true>(rb, jt * kCols, tile, sq);
      __syncthreads();
#pragma unroll
      for (int r = 0; r < 4; ++r) {
#pragma unroll
        for (int c = 0; c < 8; ++c) acc[r][c] = Acc(0);
      }
      dt_times_y<Acc, P>(tile, blk, acc);
      __syncthreads();
      store_slot(tile, acc);
      __syncthreads();
      const int64_t j0 = jt * kCols;
      const bool first = r0 == s0;
      sum_slots<Acc, kSplit2<P>>(tile, [&](int tl, int v, Acc sum) {
        const int64_t j = j0 + tile_column<Acc>(tl % 16, v / 8);
        const int c = 8 * (tl / 16) + v % 8;
        if (j < n && c < p) {
          Acc* out = zp + j * p + c;
          *out = first ? sum : *out + sum;
        }
      });
      __syncthreads();
    }
  }
  if (t == 0) q.fpart[i * q.slabs + blockIdx.x] = frob;
}

// A members entry outside [0, batch): NaN in the slab's y rows, its z partial and its frob2 partial.
template <typename Acc>
__device__ void poison_slab(const Params<Acc>& q, int64_t i) {
  const int64_t s0 = blockIdx.x * q.slab_rows;
  const int64_t s1 = s0 + q.slab_rows < q.m ? s0 + q.slab_rows : q.m;
  Acc* y = q.y + (i * q.m + s0) * q.p;
  Acc* zp = q.zpart + (i * q.slabs + blockIdx.x) * q.n * q.p;
  for (int64_t e = threadIdx.x; e < (s1 - s0) * q.p; e += kThreads) y[e] = quiet_nan<Acc>();
  for (int64_t e = threadIdx.x; e < q.n * q.p; e += kThreads) zp[e] = quiet_nan<Acc>();
  if (threadIdx.x == 0) q.fpart[i * q.slabs + blockIdx.x] = quiet_nan<double>();
}

// grid (slabs, min(num_members, 65535)), kThreads threads, kSharedBytes<Acc, P> dynamic shared memory.
template <class E, typename Acc, int P>
__global__ void __launch_bounds__(kThreads, 2) delta_products_kernel(const Params<Acc> q) {
  extern __shared__ __align__(16) unsigned char shared[];
  Acc* tile = reinterpret_cast<Acc*>(shared);
  Acc* blk = tile + kTileElems<Acc>;
  Acc* rowsq = blk + kRows * P;
  for (int64_t i = blockIdx.y; i < q.num_members; i += gridDim.y) {
    const int64_t member = q.members[i];
    if (member < 0 || member >= q.batch) {
      poison_slab(q, i);
    } else {
      product_slab<E, Acc, P>(q, i, member, tile, blk, rowsq);
    }
  }
}

// z[i] = sum over slabs s, in order, of zpart[i, s]; frob2[i] likewise.
// grid (ceil(n p / kThreads), min(num_members, 65535)).
template <typename Acc>
__global__ void __launch_bounds__(kThreads) sum_slabs_kernel(const Acc* __restrict__ zpart,
                                                             const double* __restrict__ fpart, int64_t slabs,
                                                             int64_t np, int64_t num_members, Acc* __restrict__ z,
                                                             double* __restrict__ frob2) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  for (int64_t i = blockIdx.y; i < num_members; i += gridDim.y) {
    if (e < np) {
      const Acc* src = zpart + i * slabs * np + e;
      Acc sum = src[0];
      for (int64_t s = 1; s < slabs; ++s) sum += src[s * np];
      z[i * np + e] = sum;
    }
    if (e == 0) {
      double sum = fpart[i * slabs];
      for (int64_t s = 1; s < slabs; ++s) sum += fpart[i * slabs + s];
      frob2[i] = sum;
    }
  }
}

// ---------------------------------------------------------------- host side

struct SlabShape {
  int64_t count;
  int64_t rows;
};

// S = clamp(ceil(m / 128), 1, 64) slabs of ceil(m / S) rows. None is empty:
// (S - 1) ceil(m / S) < m because (S - 1)^2 < m (m > 128 (S - 1) for S <= 64).
SlabShape slab_shape(int64_t m) {
  int64_t count = (m + kSlabRows - 1) / kSlabRows;
  count = count < 1 ? 1 : (count > kMaxSlabs ? kMaxSlabs : count);
  return {count, (m + count - 1) / count};
}

// Workspace of a group of `members` blocks (slabs > 1): the frob2 partials
// [members, slabs] (8 * slabs bytes a block, rounded up to 16), then the z
// partials [members, slabs, n, p].
size_t fpart_bytes(int64_t members, int64_t slabs) {
  return static_cast<size_t>(members) * ((static_cast<size_t>(slabs) * sizeof(double) + 15) / 16 * 16);
}

template <typename Acc>
size_t group_bytes(int64_t members, int64_t slabs, int64_t n, int64_t p) {
  return fpart_bytes(members, slabs) + static_cast<size_t>(members * slabs * n * p) * sizeof(Acc);
}

template <typename Acc>
struct Launch {
  const void* after;
  const void* before;
  int64_t batch, m, n, a_batch, a_row, b_batch, b_row;
  const int64_t* members;
  int64_t num_members;
  const Acc* x;
  int64_t p;
  Acc* y;
  Acc* z;
  double* frob2;
  void* workspace;
  int64_t group;  // blocks per launch
  cudaStream_t stream;
};

unsigned grid_y(int64_t members) { return static_cast<unsigned>(members < kMaxGridY ? members : kMaxGridY); }

template <class E, typename Acc, int P>
cudaError_t launch_shape(const Launch<Acc>& l) {
  const auto kernel = delta_products_kernel<E, Acc, P>;
  constexpr size_t kShared = kSharedBytes<Acc, P>;
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kShared));
  if (err != cudaSuccess) return err;
  const SlabShape slabs = slab_shape(l.m);
  const int64_t np = l.n * l.p;
  for (int64_t first = 0; first < l.num_members; first += l.group) {
    const int64_t count = l.num_members - first < l.group ? l.num_members - first : l.group;
    Params<Acc> q{l.after, l.before, l.batch, l.m, l.n, l.a_batch, l.a_row, l.b_batch, l.b_row,
                  l.members + first, count, l.x + first * np, l.p, l.y + first * l.m * l.p,
                  l.z + first * np, l.frob2 + first, slabs.count, slabs.rows};
    if (slabs.count > 1) {
      q.fpart = static_cast<double*>(l.workspace);
      q.zpart = reinterpret_cast<Acc*>(static_cast<char*>(l.workspace) + fpart_bytes(count, slabs.count));
    }
    kernel<<<dim3(static_cast<unsigned>(slabs.count), grid_y(count)), kThreads, kShared, l.stream>>>(q);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    if (slabs.count > 1) {
      const auto blocks_x = static_cast<unsigned>((np + kThreads - 1) / kThreads);
      sum_slabs_kernel<Acc><<<dim3(blocks_x, grid_y(count)), kThreads, 0, l.stream>>>(
          q.zpart, q.fpart, slabs.count, np, count, l.z + first * np, l.frob2 + first);
      if ((err = cudaGetLastError()) != cudaSuccess) return err;
    }
  }
  return cudaSuccess;
}

template <class E, typename Acc>
cudaError_t launch_typed(const Launch<Acc>& l) {
  if (l.p <= 8) return launch_shape<E, Acc, 8>(l);
  if (l.p <= 16) return launch_shape<E, Acc, 16>(l);
  return launch_shape<E, Acc, 32>(l);
}

}  // namespace

template <typename Acc>
size_t delta_products_workspace_bytes(int64_t num_members, int64_t m, int64_t n, int64_t p) {
  const SlabShape slabs = slab_shape(m);
  if (num_members <= 0 || m <= 0 || n <= 0 || p <= 0 || slabs.count == 1) return 0;
  return group_bytes<Acc>(num_members, slabs.count, n, p);
}

template <typename Acc>
cudaError_t launch_delta_products(const void* after, const void* before, ElemType type, int64_t batch,
                                      int64_t m, int64_t n, int64_t after_batch_stride, int64_t after_row_stride,
                                      int64_t before_batch_stride, int64_t before_row_stride,
                                      const int64_t* members, int64_t num_members, const Acc* x, int64_t p,
                                      Acc* y, Acc* z, double* frob2, void* workspace, size_t workspace_bytes,
                                      cudaStream_t stream) {
  if (batch < 0 || m < 0 || n < 0 || num_members < 0 || p < 1 || p > 32) return cudaErrorInvalidValue;
  if (type != ElemType::kFloat32 && type != ElemType::kFloat16 && type != ElemType::kBFloat16) {
    return cudaErrorInvalidValue;
  }
  if (num_members == 0) return cudaSuccess;
  if (m == 0 || n == 0) {  // all zeros (an empty y or z may come as a null pointer)
    const auto zero = [stream](void* out, int64_t values, size_t size) {
      return values == 0 ? cudaSuccess : cudaMemsetAsync(out, 0, static_cast<size_t>(values) * size, stream);
    };
    cudaError_t err = zero(y, num_members * m * p, sizeof(Acc));
    if (err == cudaSuccess) err = zero(z, num_members * n * p, sizeof(Acc));
    if (err == cudaSuccess) err = zero(frob2, num_members, sizeof(double));
    return err;
  }
  const SlabShape slabs = slab_shape(m);
  int64_t group = num_members;
  if (slabs.count > 1) {
    const size_t per_member = group_bytes<Acc>(1, slabs.count, n, p);
    const auto fits = static_cast<int64_t>(workspace_bytes / per_member);  // group_bytes is linear in members
    if (fits == 0) return cudaErrorInvalidValue;
    group = fits < num_members ? fits : num_members;
  }
  const Launch<Acc> l{after, before, batch, m, n, after_batch_stride, after_row_stride, before_batch_stride,
                      before_row_stride, members, num_members, x, p, y, z, frob2, workspace, group, stream};
  switch (type) {
    case ElemType::kFloat32: return launch_typed<F32, Acc>(l);
    case ElemType::kFloat16: return launch_typed<F16, Acc>(l);
    case ElemType::kBFloat16: return launch_typed<BF16, Acc>(l);
  }
  return cudaErrorInvalidValue;
}

template size_t delta_products_workspace_bytes<float>(int64_t, int64_t, int64_t, int64_t);
template size_t delta_products_workspace_bytes<double>(int64_t, int64_t, int64_t, int64_t);
template cudaError_t launch_delta_products<float>(const void*, const void*, ElemType, int64_t, int64_t, int64_t,
                                                      int64_t, int64_t, int64_t, int64_t, const int64_t*, int64_t,
                                                      const float*, int64_t, float*, float*, double*, void*, size_t,
                                                      cudaStream_t);
template cudaError_t launch_delta_products<double>(const void*, const void*, ElemType, int64_t, int64_t,
                                                       int64_t, int64_t, int64_t, int64_t, int64_t, const int64_t*,
                                                       int64_t, const double*, int64_t, double*, double*, double*,
                                                       void*, size_t, cudaStream_t);

}  // namespace rlsignals::cuda
