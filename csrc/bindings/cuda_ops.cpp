// CUDA implementations of the rlsignals operators (schemas in ops.cpp and svd_ops.cpp).
// The only file that includes torch's CUDA headers; the kernels themselves are
// plain CUDA in csrc/cuda/. Built only where torch has CUDA.
//
// The stream comes from c10/cuda/CUDAStream.h (what at::cuda::getCurrentCUDAStream
// in ATen/cuda/CUDAContext.h forwards to), which needs no cuBLAS/cuSPARSE
// headers, so tests/test_cuda_compile.py can syntax-check this file against a
// CPU-only torch.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstddef>
#include <optional>
#include <tuple>

#include "../cuda/delta_products.cuh"
#include "../cuda/unit_sums.cuh"
#include "tensor_args.h"

namespace rlsignals {

std::tuple<at::Tensor, at::Tensor> unit_sums_cuda(const at::Tensor& hidden, const at::Tensor& offsets,
                                                   double eps) {
  check_unit_sums_args(hidden, offsets);
  TORCH_CHECK(hidden.is_cuda(), "unit_sums: hidden must be a CUDA tensor, got one on ", hidden.device());
  TORCH_CHECK(offsets.device() == hidden.device(), "unit_sums: offsets must be on hidden's device (",
              hidden.device(), "), got ", offsets.device());
  const ElemType type = elem_type_of(hidden);
  const c10::cuda::CUDAGuard guard(hidden.device());
  const at::Tensor offs = offsets.contiguous();
  const int64_t num_ranges = offs.numel() - 1;
  const int64_t d = hidden.size(1);
  at::Tensor sums = at::empty({num_ranges, d}, hidden.options().dtype(at::kFloat));
  at::Tensor sqsums = at::empty({num_ranges}, hidden.options().dtype(at::kFloat));
  const cudaError_t err = cuda::launch_unit_sums(
      hidden.data_ptr(), type, d, hidden.stride(0), offs.data_ptr<int64_t>(), num_ranges,
      static_cast<float>(eps), sums.data_ptr<float>(), sqsums.data_ptr<float>(),
      c10::cuda::getCurrentCUDAStream(hidden.device().index()).stream());
  TORCH_CHECK(err == cudaSuccess, "unit_sums: CUDA kernel launch failed: ", cudaGetErrorString(err),
              " (hidden ", hidden.sizes(), " ", hidden.scalar_type(), ", stride ", hidden.strides(),
              "; ", num_ranges, " ranges)");
  return {sums, sqsums};
}

namespace {

// Most workspace one delta_gram_product call allocates: past it, the members
// run in groups of as many as fit (one per group at least).
constexpr size_t kMaxProductWorkspace = size_t{256} << 20;

template <typename Acc>
cudaError_t launch_product(const at::Tensor& after, const std::optional<at::Tensor>& before, const at::Tensor& x,
                           const at::Tensor& ids, at::Tensor& y, at::Tensor& z, at::Tensor& frob2) {
  const int64_t num = x.size(0), m = after.size(1), n = after.size(2), p = x.size(2);
  const size_t all = cuda::delta_gram_workspace_bytes<Acc>(num, m, n, p);
  const size_t one = cuda::delta_gram_workspace_bytes<Acc>(1, m, n, p);
  const size_t bytes = all <= kMaxProductWorkspace ? all : std::max(one, kMaxProductWorkspace);
  // Freed on return while the kernels may still run: the caching allocator
  // orders its reuse on this stream.
  const at::Tensor workspace = at::empty({static_cast<int64_t>(bytes)}, after.options().dtype(at::kByte));
  return cuda::launch_delta_gram_product<Acc>(
      after.data_ptr(), before ? before->data_ptr() : nullptr, elem_type_of(after), after.size(0), m, n,
      after.stride(0), after.stride(1), before ? before->stride(0) : 0, before ? before->stride(1) : 0,
      ids.data_ptr<int64_t>(), num, x.data_ptr<Acc>(), p, y.data_ptr<Acc>(), z.data_ptr<Acc>(),
      frob2.data_ptr<double>(), workspace.data_ptr(), bytes,
      c10::cuda::getCurrentCUDAStream(after.device().index()).stream());
}

}  // namespace

// members may be on the CPU or on after's device. They are not checked on the
// host (that would synchronize): an entry outside [0, B) gives NaN in its
// block's Y, Z and frob2 (the CPU kernel raises).
std::tuple<at::Tensor, at::Tensor, at::Tensor> delta_gram_product_cuda(const at::Tensor& after,
                                                                      const std::optional<at::Tensor>& before,
                                                                      const at::Tensor& x,
                                                                      const at::Tensor& members) {
  check_product_args(after, before, x, members);
  TORCH_CHECK(after.is_cuda(), "delta_gram_product: after must be a CUDA tensor, got one on ", after.device());
  const c10::cuda::CUDAGuard guard(after.device());
  const at::Tensor ids = members.to(after.device()).contiguous();
  at::Tensor y = at::empty({x.size(0), after.size(1), x.size(2)}, x.options());
  at::Tensor z = at::empty_like(x);
  at::Tensor frob2 = at::empty({x.size(0)}, x.options().dtype(at::kDouble));
  const cudaError_t err = x.scalar_type() == at::kFloat ? launch_product<float>(after, before, x, ids, y, z, frob2)
                                                         : launch_product<double>(after, before, x, ids, y, z, frob2);
  TORCH_CHECK(err == cudaSuccess, "delta_gram_product: CUDA kernel launch failed: ", cudaGetErrorString(err),
              " (after ", after.sizes(), " ", after.scalar_type(), ", stride ", after.strides(), "; x ", x.sizes(),
              " ", x.scalar_type(), ")");
  return {y, z, frob2};
}

TORCH_LIBRARY_IMPL(rlsignals, CUDA, m) {
  m.impl("unit_sums", &unit_sums_cuda);
  m.impl("delta_gram_product", &delta_gram_product_cuda);
}

}  // namespace rlsignals
