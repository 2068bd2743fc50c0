// Argument checks and conversions shared by the CPU and CUDA registrations.
// The Python layer validates user input with friendly messages first; these
// checks guard direct calls of torch.ops.rlsignals.* .
#pragma once
#include <ATen/ATen.h>

#include <optional>

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

// after [B, m, n] and before (same) with contiguous rows, x contiguous [b, n, p]
// (1 <= p <= 32) in float32 or float64, members int64 [b]; one device.
inline void check_product_args(const at::Tensor& after, const std::optional<at::Tensor>& before,
                               const at::Tensor& x, const at::Tensor& members) {
  TORCH_CHECK(after.dim() == 3 && after.stride(2) == 1,
              "delta_products: after must be [B, m, n] with contiguous rows, got ", after.sizes());
  if (before) {
    TORCH_CHECK(before->sizes() == after.sizes() && before->scalar_type() == after.scalar_type() &&
                    before->stride(2) == 1,
                "delta_products: before must match after's shape and dtype, with contiguous rows");
  }
  TORCH_CHECK(x.dim() == 3 && x.size(1) == after.size(2) && x.is_contiguous() && x.size(2) >= 1 && x.size(2) <= 32,
              "delta_products: x must be contiguous [b, n, p] with n = after.size(2) and 1 <= p <= 32, got ",
              x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "delta_products: x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(members.dim() == 1 && members.size(0) == x.size(0) && members.scalar_type() == at::kLong,
              "delta_products: members must be int64 [b], one per block of x");
  TORCH_CHECK(x.device() == after.device() && (!before || before->device() == after.device()),
              "delta_products: after, before and x must be on one device");
}

}  // namespace rlsignals
