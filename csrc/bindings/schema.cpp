// The one schema file of the rlsignals operator library (torch.ops.rlsignals).
// Implementations register per op and device in the files named after the op:
// unit_sums_cpu.cpp / delta_products_cpu.cpp (CPU) and unit_sums_cuda.cpp /
// delta_products_cuda.cpp (CUDA, built only where torch has CUDA). Fake
// kernels and autograd formulas are registered from Python
// (pyext/rlsignals/ops/registration.py); the Triton kernels are the ops
// rlsignals_triton::<same name> (triton_kernels/).
//
//   unit_sums(hidden [T, d], offsets [R + 1] int64, eps) -> (sums fp32 [R, d], sqsums fp32 [R])
//       sums[r] = sum of h_i / max(||h_i||, eps) over rows offsets[r] <= i < offsets[r + 1];
//       sqsums[r] = sum of the squared norms of those unit rows.
//   delta_products(after [B, m, n], before [B, m, n]?, x [b, n, p], members int64 [b])
//       -> (Y [b, m, p], Z [b, n, p], frob2 fp64 [b]) with dW = after[members[i]] - before[...]:
//       Y = dW x[i], Z = dW^T Y, frob2 = ||dW||_F^2, in one pass over dW.
//   registered_kernels() -> str[]: the "op:KEY" pairs this build registered (registry.h).
#include <torch/library.h>

#include <string>
#include <vector>

#include "registry.h"

namespace rlsignals {
namespace {

std::vector<std::string> registered_kernels() { return kernel_registry(); }

}  // namespace

TORCH_LIBRARY(rlsignals, m) {
  m.def("unit_sums(Tensor hidden, Tensor offsets, float eps) -> (Tensor, Tensor)");
  m.def("delta_products(Tensor after, Tensor? before, Tensor x, Tensor members) -> (Tensor, Tensor, Tensor)");
  m.def("registered_kernels() -> str[]", &registered_kernels);
}

}  // namespace rlsignals
