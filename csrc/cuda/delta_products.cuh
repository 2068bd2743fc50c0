// Fused products of a weight delta with a skinny block (CUDA): the one pass
// behind each delta_svd iteration.
//
// For block i of the member list, b = members[i], dW = after[b] - before[b]
// ([m, n], rows at a row stride, columns contiguous; no before: dW = after[b])
// and X_i = x[i] ([n, p], row-major, 1 <= p <= 32):
//
//     y[i]     = dW X_i          [m, p]   Acc
//     z[i]     = dW^T y[i]       [n, p]   Acc   (= dW^T dW X_i)
//     frob2[i] = ||dW||_F^2             double
//
// The same contract as the CPU kernel (csrc/delta_products.h): entries of dW
// are the inputs' difference rounded once to the accumulation type Acc (float
// or double); every entry of y and z is a sum of n (resp. m) products in Acc;
// the squares of a row are summed in Acc and the rows added in double. Each
// element of after and before is loaded by one thread block, twice: Y and the
// Z update come from the same tile, the second load meant to hit L2, so that
// DRAM serves each element once per call where L2 holds the tiles in between
// (delta_products.cu says when). Results are deterministic: every sum has a fixed order that
// depends on the shapes only (m fixes the row slabs, as on the CPU), never on
// scheduling; no atomics.
//
// Plain CUDA (raw pointers and a stream, no torch headers), so that nvcc can
// compile it on a machine without a GPU; the torch binding is
// csrc/bindings/delta_products_cuda.cpp. This header is also read by the host compiler.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "../elem_type.h"

namespace rlsignals::cuda {

// Bytes of device workspace that launch_delta_products needs to process
// `num_members` blocks in one launch: 0 when m <= 128 (one row slab: the kernel
// writes z and frob2 directly) or when there is no work; otherwise
//     num_members * (S * n * p * sizeof(Acc) + 16 * ceil(S / 2))
// with S = min(ceil(m / 128), 64) row slabs: one partial z [n, p] and one
// partial frob2 (double) per slab and block, summed in slab order by a second
// kernel. The bytes are linear in num_members.
template <typename Acc>
size_t delta_products_workspace_bytes(int64_t num_members, int64_t m, int64_t n, int64_t p);

// after / before: device pointers to element (0, 0, 0) of [batch, m, n] stacks
//   of `type`, matrix b at b * *_batch_stride elements, rows *_row_stride
//   elements apart, columns contiguous. before may be null (dW = after[b]).
// members: device pointer to num_members int64 batch indices, trusted (not
//   checked on the host); an entry outside [0, batch) makes its block's y, z and
//   frob2 NaN (nothing out of bounds is read).
// x [num_members, n, p], y [num_members, m, p], z [num_members, n, p] in Acc
//   and frob2 [num_members] in double: contiguous device pointers; y, z and
//   frob2 are overwritten (zeros when m == 0 or n == 0).
// workspace: 16-byte aligned device memory of workspace_bytes bytes. With
//   fewer bytes than delta_products_workspace_bytes(num_members, m, n, p), the
//   blocks run in groups of as many as it holds; it must hold one.
// Strides may take any value; loads are 16 bytes wide (fastest) when after and
// before are 16-byte aligned and their row and batch strides are multiples of
// 16 bytes. All pointers on the device current for `stream`.
// Returns cudaErrorInvalidValue for a negative batch, m, n or num_members, p
// outside [1, 32], an unknown type or a workspace too small for one block;
// cudaSuccess without any launch for num_members == 0; else the first error of
// the launches (or of the zero fills for m == 0 or n == 0).
template <typename Acc>
cudaError_t launch_delta_products(const void* after, const void* before, ElemType type, int64_t batch,
                                      int64_t m, int64_t n, int64_t after_batch_stride, int64_t after_row_stride,
                                      int64_t before_batch_stride, int64_t before_row_stride,
                                      const int64_t* members, int64_t num_members, const Acc* x, int64_t p,
                                      Acc* y, Acc* z, double* frob2, void* workspace, size_t workspace_bytes,
                                      cudaStream_t stream);

extern template size_t delta_products_workspace_bytes<float>(int64_t, int64_t, int64_t, int64_t);
extern template size_t delta_products_workspace_bytes<double>(int64_t, int64_t, int64_t, int64_t);
extern template cudaError_t launch_delta_products<float>(const void*, const void*, ElemType, int64_t, int64_t,
                                                             int64_t, int64_t, int64_t, int64_t, int64_t,
                                                             const int64_t*, int64_t, const float*, int64_t,
                                                             float*, float*, double*, void*, size_t, cudaStream_t);
extern template cudaError_t launch_delta_products<double>(const void*, const void*, ElemType, int64_t, int64_t,
                                                              int64_t, int64_t, int64_t, int64_t, int64_t,
                                                              const int64_t*, int64_t, const double*, int64_t,
                                                              double*, double*, double*, void*, size_t,
                                                              cudaStream_t);

}  // namespace rlsignals::cuda
