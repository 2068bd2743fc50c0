// Fused products of a weight delta with a skinny block (CPU), the one pass
// behind each delta_svd iteration.
//
// For dW = after - before (row-major [m, n]; before may be null: dW = after)
// and X [n, p] (row-major, p <= 32 in practice):
//
//     Y = dW X              [m, p]
//     Z = dW^T Y            [n, p]      (= dW^T dW X)
//     returns ||dW||_F^2    (double)
//
// in ONE pass over after and before. Rows are taken in groups; a group of dW
// is formed in the accumulation type Acc (float or double) in a small buffer,
// never all of dW. Every entry of Y is a sum over j in a fixed order (in order
// for p > 4; for p <= 4 in vector-width partial sums, then those in order);
// every entry of Z a sum over rows, in order within fixed slabs of rows and
// the slab sums in order; the squares of a row are summed in Acc and the rows
// in double in order. The slabs depend on the sizes only: results do not
// depend on the thread count.
#pragma once
#include <cstdint>

#include "elem_type.h"

namespace rlsignals::cpu {

// after/before: [m, n] in `type`, rows at after_stride / before_stride elements.
// x [n, p], y [m, p], z [n, p] row-major in Acc; y and z are overwritten.
double delta_products(const void* after, const void* before, ElemType type, int64_t m, int64_t n,
                          int64_t after_stride, int64_t before_stride, const float* x, int64_t p, float* y,
                          float* z);
double delta_products(const void* after, const void* before, ElemType type, int64_t m, int64_t n,
                          int64_t after_stride, int64_t before_stride, const double* x, int64_t p, double* y,
                          double* z);

}  // namespace rlsignals::cpu
