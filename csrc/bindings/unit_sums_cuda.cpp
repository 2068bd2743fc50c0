// CUDA implementation of rlsignals::unit_sums (schema in schema.cpp); the kernel
// is plain CUDA in ../cuda/unit_sums.cu. Built only where torch has CUDA.
//
// The stream comes from c10/cuda/CUDAStream.h (what at::cuda::getCurrentCUDAStream
// in ATen/cuda/CUDAContext.h forwards to), which needs no cuBLAS/cuSPARSE
// headers, so tests/test_cuda_compile.py can syntax-check this file against a
// CPU-only torch.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "../cuda/unit_sums.cuh"
#include "registry.h"
#include "tensor_args.h"

namespace rlsignals {
namespace {

std::tuple<at::Tensor, at::Tensor> unit_sums_cuda(const at::Tensor& hidden, const at::Tensor& offsets, double eps) {
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

const KernelNote note("unit_sums", "CUDA");

}  // namespace

TORCH_LIBRARY_IMPL(rlsignals, CUDA, m) { m.impl("unit_sums", &unit_sums_cuda); }

}  // namespace rlsignals
