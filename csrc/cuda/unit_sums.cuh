// Sums of unit-normalised rows over contiguous row ranges (CUDA).
//
// For hidden states h_i (row i of a row-major [T, d] matrix whose rows start
// row_stride elements apart, columns contiguous) and
// u_i = h_i / max(||h_i||_2, eps), range r = rows [offsets[r], offsets[r+1]):
//
//     sums[r, :] = sum_{i in r} u_i            (fp32, [R, d], row-major, contiguous)
//     sqsums[r]  = sum_{i in r} ||u_i||^2      (fp32, [R]; 1 per non-zero row)
//
// The same math as the CPU kernel (csrc/unit_sums.h): each input element is
// read from device memory once, in its own type, and accumulated in fp32. A
// row whose squared norm overflows fp32 (entries above about 1.8e19) is
// normalised after an exact scaling by 2^-100, so every finite row of fp32 or
// bf16 gives its unit vector. An empty range gives zeros. A row holding NaN or inf makes its range's sqsums
// NaN, and NaN in sums where that row's u is undefined (every column for a NaN
// row; the inf columns for an inf row, whose u is inf/inf); other ranges are
// untouched. Results are deterministic: a fixed reduction order, no atomics.
//
// Plain CUDA (raw pointers and a stream, no torch headers), so that nvcc can
// compile it on a machine without a GPU; the torch binding is
// csrc/bindings/unit_sums_cuda.cpp. This header is also read by the host compiler.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "../elem_type.h"

namespace rlsignals::cuda {

// hidden: device pointer to element (0, 0) of the [T, d] matrix, of type `type`.
// d >= 0; row_stride: elements between consecutive rows (any value, 0 included).
// offsets: device pointer to R + 1 non-decreasing row indices in [0, T]
//   (trusted: not checked, as in the CPU kernel).
// sums [R, d] and sqsums [R]: device pointers, overwritten.
// All pointers on the device current for `stream`. Any d and alignment work.
// Fastest (the range's sums in registers, 16-byte loads) when d * elem_size and
// row_stride * elem_size are multiples of 16, hidden and sums are 16-byte
// aligned, and d <= 32768 (fp16/bf16) or 16384 (fp32). Other rows of up to 4096
// elements also keep the sums in registers (one element per load); past that a
// slower kernel reads each row twice.
// Returns cudaErrorInvalidValue for d < 0 or num_ranges < 0, cudaSuccess
// without a launch for num_ranges == 0, else the launch's error code.
cudaError_t launch_unit_sums(const void* hidden, ElemType type, int64_t d, int64_t row_stride,
                             const int64_t* offsets, int64_t num_ranges, float eps, float* sums,
                             float* sqsums, cudaStream_t stream);

}  // namespace rlsignals::cuda
