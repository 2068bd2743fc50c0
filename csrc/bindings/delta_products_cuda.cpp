// CUDA implementation of rlsignals::delta_products (schema in schema.cpp); the
// kernels are plain CUDA in ../cuda/delta_products.cu. Built only where torch
// has CUDA; compiled as host code against a CPU-only torch by
// tests/test_cuda_compile.py (the stream from c10/cuda/CUDAStream.h needs no
// cuBLAS headers).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstddef>
#include <optional>
#include <tuple>

#include "../cuda/delta_products.cuh"
#include "registry.h"
#include "tensor_args.h"

namespace rlsignals {
namespace {

// Most workspace one delta_products call allocates: past it, the members
// run in groups of as many as fit (one per group at least).
constexpr size_t kMaxProductWorkspace = size_t{256} << 20;

template <typename Acc>
cudaError_t launch_product(const at::Tensor& after, const std::optional<at::Tensor>& before, const at::Tensor& x,
                           const at::Tensor& ids, at::Tensor& y, at::Tensor& z, at::Tensor& frob2) {
  const int64_t num = x.size(0), m = after.size(1), n = after.size(2), p = x.size(2);
  const size_t all = cuda::delta_products_workspace_bytes<Acc>(num, m, n, p);
  const size_t one = cuda::delta_products_workspace_bytes<Acc>(1, m, n, p);
  const size_t bytes = all <= kMaxProductWorkspace ? all : std::max(one, kMaxProductWorkspace);
  // Freed on return while the kernels may still run: the caching allocator
  // orders its reuse on this stream.
  const at::Tensor workspace = at::empty({static_cast<int64_t>(bytes)}, after.options().dtype(at::kByte));
  return cuda::launch_delta_products<Acc>(
      after.data_ptr(), before ? before->data_ptr() : nullptr, elem_type_of(after), after.size(0), m, n,
      after.stride(0), after.stride(1), before ? before->stride(0) : 0, before ? before->stride(1) : 0,
      ids.data_ptr<int64_t>(), num, x.data_ptr<Acc>(), p, y.data_ptr<Acc>(), z.data_ptr<Acc>(),
      frob2.data_ptr<double>(), workspace.data_ptr(), bytes,
      c10::cuda::getCurrentCUDAStream(after.device().index()).stream());
}

// members may be on the CPU or on after's device. They are not checked on the
// host (that would synchronize): an entry outside [0, B) gives NaN in its
// block's Y, Z and frob2 (the CPU kernel raises).
std::tuple<at::Tensor, at::Tensor, at::Tensor> delta_products_cuda(const at::Tensor& after,
                                                                  const std::optional<at::Tensor>& before,
                                                                  const at::Tensor& x, const at::Tensor& members) {
  check_product_args(after, before, x, members);
  TORCH_CHECK(after.is_cuda(), "delta_products: after must be a CUDA tensor, got one on ", after.device());
  const c10::cuda::CUDAGuard guard(after.device());
  const at::Tensor ids = members.to(after.device()).contiguous();
  at::Tensor y = at::empty({x.size(0), after.size(1), x.size(2)}, x.options());
  at::Tensor z = at::empty_like(x);
  at::Tensor frob2 = at::empty({x.size(0)}, x.options().dtype(at::kDouble));
  const cudaError_t err = x.scalar_type() == at::kFloat ? launch_product<float>(after, before, x, ids, y, z, frob2)
                                                         : launch_product<double>(after, before, x, ids, y, z, frob2);
  TORCH_CHECK(err == cudaSuccess, "delta_products: CUDA kernel launch failed: ", cudaGetErrorString(err),
              " (after ", after.sizes(), " ", after.scalar_type(), ", stride ", after.strides(), "; x ", x.sizes(),
              " ", x.scalar_type(), ")");
  return {y, z, frob2};
}

const KernelNote note("delta_products", "CUDA");

}  // namespace

TORCH_LIBRARY_IMPL(rlsignals, CUDA, m) { m.impl("delta_products", &delta_products_cuda); }

}  // namespace rlsignals
