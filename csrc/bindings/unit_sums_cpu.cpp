// CPU implementation of rlsignals::unit_sums (schema in schema.cpp, math in ../unit_sums.h).
#include <torch/library.h>

#include <tuple>

#include "../unit_sums.h"
#include "registry.h"
#include "tensor_args.h"

namespace rlsignals {
namespace {

std::tuple<at::Tensor, at::Tensor> unit_sums_cpu(const at::Tensor& hidden, const at::Tensor& offsets, double eps) {
  check_unit_sums_args(hidden, offsets);
  TORCH_CHECK(offsets.device().is_cpu(), "unit_sums: offsets must be on the CPU for CPU hidden states");
  const at::Tensor offs = offsets.contiguous();
  const int64_t num_ranges = offs.numel() - 1;
  const int64_t* bounds = offs.data_ptr<int64_t>();
  TORCH_CHECK(bounds[0] >= 0 && bounds[num_ranges] <= hidden.size(0),
              "unit_sums: offsets must lie in [0, T = ", hidden.size(0), "]");
  for (int64_t r = 0; r < num_ranges; ++r) {
    TORCH_CHECK(bounds[r] <= bounds[r + 1], "unit_sums: offsets must be non-decreasing (offsets[", r, "] > offsets[",
                r + 1, "])");
  }
  const int64_t d = hidden.size(1);
  at::Tensor sums = at::empty({num_ranges, d}, hidden.options().dtype(at::kFloat));
  at::Tensor sqsums = at::empty({num_ranges}, hidden.options().dtype(at::kFloat));
  cpu::unit_sums(hidden.data_ptr(), elem_type_of(hidden), d, hidden.stride(0), bounds, num_ranges,
                 static_cast<float>(eps), sums.data_ptr<float>(), sqsums.data_ptr<float>());
  return {sums, sqsums};
}

const KernelNote note("unit_sums", "CPU");

}  // namespace

TORCH_LIBRARY_IMPL(rlsignals, CPU, m) { m.impl("unit_sums", &unit_sums_cpu); }

}  // namespace rlsignals
