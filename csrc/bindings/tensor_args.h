// Argument checks and conversions shared by the CPU and CUDA registrations.
// The Python layer validates user input with friendly messages first; these
// checks guard direct calls of torch.ops.rlsignals.* .
#pragma once
#include <ATen/ATen.h>

#include "../elem_type.h"

namespace rlsignals {

inline ElemType elem_type_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return ElemType::kFloat32;
    case at::kHalf: return ElemType::kFloat16;
    case at::kBFloat16: return ElemType::kBFloat16;
    default: TORCH_CHECK(false, "rlsignals: expected a float32, float16 or bfloat16 tensor, got ", t.scalar_type());
  }
}

// hidden [T, d] with unit column stride; offsets [R + 1] int64 on hidden's device.
inline void check_unit_sums_args(const at::Tensor& hidden, const at::Tensor& offsets) {
  TORCH_CHECK(hidden.dim() == 2, "unit_sums: hidden must be [T, d], got ", hidden.sizes());
  TORCH_CHECK(hidden.stride(1) == 1 || hidden.size(1) <= 1, "unit_sums: hidden rows must be contiguous");
  TORCH_CHECK(offsets.dim() == 1 && offsets.numel() >= 1 && offsets.scalar_type() == at::kLong,
              "unit_sums: offsets must be a 1-D int64 tensor with R + 1 entries");
}

}  // namespace rlsignals
