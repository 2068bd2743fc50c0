// Sums of unit-normalised rows over contiguous row ranges (CPU).
//
// For hidden states h_i (row i of a row-major [T, d] matrix) and
// u_i = h_i / max(||h_i||_2, eps), range r = rows [offsets[r], offsets[r+1]):
//
//     sums[r, :] = sum_{i in r} u_i            (fp32, [R, d])
//     sqsums[r]  = sum_{i in r} ||u_i||^2      (fp32, [R]; 1 per non-zero row)
//
// Every angle statistic (mean cosine within a block, between two blocks, with
// or without the diagonal, causal) is a closed form of these two sums, so the
// kernel reads each input element exactly once and never forms a T x T matrix.
// Inputs are read in their own type and accumulated in fp32. Any finite row is
// normalised without overflow: a row whose squared norm overflows fp32
// (entries above about 1.8e19) is normalised again after an exact scaling by
// 2^-100. A non-finite row makes its range's outputs NaN and leaves other
// ranges untouched.
#pragma once
#include <cstdint>

#include "elem_type.h"

namespace rlsignals::cpu {

// offsets: R + 1 non-decreasing row indices; sums and sqsums are overwritten.
// Ranges are processed in parallel (OpenMP); each range is summed in row order
// by one thread, so results do not depend on the thread count.
void unit_sums(const void* hidden, ElemType type, int64_t d, int64_t row_stride,
               const int64_t* offsets, int64_t num_ranges, float eps, float* sums,
               float* sqsums);

}  // namespace rlsignals::cpu
