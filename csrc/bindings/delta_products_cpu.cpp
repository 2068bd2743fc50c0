// CPU implementation of rlsignals::delta_products (schema in schema.cpp, math in
// ../delta_products.h). Python validates user input first (ops/svd_validation.py);
// these checks guard direct calls of torch.ops.rlsignals.delta_products.
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../delta_products.h"
#include "registry.h"
#include "tensor_args.h"

namespace rlsignals {
namespace {

template <typename Acc>
void run_members(const at::Tensor& after, const std::optional<at::Tensor>& before, const at::Tensor& x,
                 const at::Tensor& members, at::Tensor& y, at::Tensor& z, at::Tensor& frob2) {
  const int64_t m = after.size(1), n = after.size(2), p = x.size(2);
  const int64_t elem = after.element_size();
  const auto* a0 = static_cast<const char*>(after.data_ptr());
  const auto* b0 = before ? static_cast<const char*>(before->data_ptr()) : nullptr;
  const auto ids = members.accessor<int64_t, 1>();
  auto frob2_out = frob2.accessor<double, 1>();
  for (int64_t i = 0; i < x.size(0); ++i) {
    const int64_t b = ids[i];
    TORCH_CHECK(b >= 0 && b < after.size(0), "delta_products: members[", i, "] = ", b, " out of range");
    const void* a_ptr = a0 + b * after.stride(0) * elem;
    const void* b_ptr = b0 ? b0 + b * before->stride(0) * elem : nullptr;
    frob2_out[i] = cpu::delta_products(a_ptr, b_ptr, elem_type_of(after), m, n, after.stride(1),
                                       before ? before->stride(1) : 0, x[i].data_ptr<Acc>(), p,
                                       y[i].data_ptr<Acc>(), z[i].data_ptr<Acc>());
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> delta_products_cpu(const at::Tensor& after,
                                                                 const std::optional<at::Tensor>& before,
                                                                 const at::Tensor& x, const at::Tensor& members) {
  check_product_args(after, before, x, members);
  const at::Tensor ids = members.to(at::kCPU);
  at::Tensor y = at::zeros({x.size(0), after.size(1), x.size(2)}, x.options());
  at::Tensor z = at::zeros_like(x);
  at::Tensor frob2 = at::zeros({x.size(0)}, x.options().dtype(at::kDouble));
  if (after.size(1) == 0 || after.size(2) == 0) return {y, z, frob2};
  if (x.scalar_type() == at::kFloat) {
    run_members<float>(after, before, x, ids, y, z, frob2);
  } else {
    run_members<double>(after, before, x, ids, y, z, frob2);
  }
  return {y, z, frob2};
}

const KernelNote note("delta_products", "CPU");

}  // namespace

TORCH_LIBRARY_IMPL(rlsignals, CPU, m) { m.impl("delta_products", &delta_products_cpu); }

}  // namespace rlsignals
