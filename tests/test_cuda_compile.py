"""The CUDA sources build with this machine's nvcc, no GPU needed.

The kernels in csrc/cuda/ (unit_sums.cu, delta_products.cu) are plain CUDA
(no torch headers), so nvcc compiles them anywhere; these tests catch compile
errors, warnings and register spills before a GPU machine sees the code, and
run each launcher's host-side argument handling. The CUDA bindings
(csrc/bindings/<op>_cuda.cpp) are compiled as host code against this torch's
headers: a CPU-only torch ships the c10/cuda headers but not the generated
CUDA macros header, which C10_CUDA_NO_CMAKE_CONFIGURE_FILE skips. Everything
is skipped, with the reason, only when nvcc is not on PATH.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
BINDINGS = [CSRC / "bindings" / f"{op}_cuda.cpp" for op in ("unit_sums", "delta_products")]
ARCHS = ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]
# What torch.utils.cpp_extension adds to every nvcc call, plus this package's flags (ops/extension.py).
TORCH_NVCC_FLAGS = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
                    "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC", "-O3", "--use_fast_math"]
STRICT = ["-Werror", "all-warnings", "-Xcompiler", "-Wall,-Wextra,-Werror",
          "-Xptxas", "--warn-on-spills,--warn-on-local-memory-usage,--warning-as-error"]

NVCC = shutil.which("nvcc")
pytestmark = [pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH (no CUDA toolkit on this machine)"),
              pytest.mark.slow]  # nvcc builds: about a minute on a 2-core CPU


def nvcc(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    cmd = [NVCC, *map(str, args)]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (f"nvcc failed ({proc.returncode}): {' '.join(cmd)}\n"
                                  f"--- stderr ---\n{proc.stderr}\n--- stdout ---\n{proc.stdout}")
    return proc


@dataclasses.dataclass(frozen=True)
class CudaKernel:
    """A kernel file csrc/cuda/<name>.cu, a program that checks its header's
    signatures as plain C++, and a host driver for its launcher."""

    name: str
    header_check: str
    driver: str

    @property
    def source(self) -> Path:
        return CSRC / "cuda" / f"{self.name}.cu"


UNIT_SUMS = CudaKernel(
    "unit_sums",
    header_check="""\
        #include "cuda/unit_sums.cuh"
        #include <type_traits>
        using Expected = cudaError_t (*)(const void*, rlsignals::ElemType, int64_t, int64_t,
                                         const int64_t*, int64_t, float, float*, float*, cudaStream_t);
        static_assert(std::is_same_v<decltype(&rlsignals::cuda::launch_unit_sums), Expected>);
        int main() { return 0; }
        """,
    driver="""\
        #include <cstdio>
        #include "cuda/unit_sums.cuh"
        using rlsignals::ElemType;
        using rlsignals::cuda::launch_unit_sums;
        int main() {
          if (launch_unit_sums(nullptr, ElemType::kFloat32, -1, 0, nullptr, 1, 1e-12f, nullptr, nullptr, nullptr)
              != cudaErrorInvalidValue) return 1;
          if (launch_unit_sums(nullptr, ElemType::kBFloat16, 8, 8, nullptr, -1, 1e-12f, nullptr, nullptr, nullptr)
              != cudaErrorInvalidValue) return 2;
          if (launch_unit_sums(nullptr, ElemType::kFloat16, 4096, 4096, nullptr, 0, 1e-12f, nullptr, nullptr, nullptr)
              != cudaSuccess) return 3;
          int devices = 0;
          if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
            const cudaError_t e = launch_unit_sums(nullptr, ElemType::kFloat32, 7, 7, nullptr, 3, 1e-12f,
                                                   nullptr, nullptr, nullptr);
            std::printf("no device; launch returned %d (%s)\\n", static_cast<int>(e), cudaGetErrorName(e));
            if (e == cudaSuccess) return 4;
          }
          return 0;
        }
        """,
)

DELTA_PRODUCTS = CudaKernel(
    "delta_products",
    header_check="""\
        #include "cuda/delta_products.cuh"
        #include <type_traits>
        template <typename Acc>
        using Launch = cudaError_t (*)(const void*, const void*, rlsignals::ElemType, int64_t, int64_t, int64_t,
                                       int64_t, int64_t, int64_t, int64_t, const int64_t*, int64_t, const Acc*,
                                       int64_t, Acc*, Acc*, double*, void*, size_t, cudaStream_t);
        using Workspace = size_t (*)(int64_t, int64_t, int64_t, int64_t);
        namespace rc = rlsignals::cuda;
        static_assert(std::is_same_v<decltype(&rc::launch_delta_products<float>), Launch<float>>);
        static_assert(std::is_same_v<decltype(&rc::launch_delta_products<double>), Launch<double>>);
        static_assert(std::is_same_v<decltype(&rc::delta_products_workspace_bytes<float>), Workspace>);
        static_assert(std::is_same_v<decltype(&rc::delta_products_workspace_bytes<double>), Workspace>);
        int main() { return 0; }
        """,
    driver="""\
        #include <cstdio>
        #include "cuda/delta_products.cuh"
        using rlsignals::ElemType;
        using rlsignals::cuda::delta_products_workspace_bytes;
        // [batch, m, n] contiguous stacks, no pointers: only the host paths may run.
        cudaError_t launch(ElemType type, int64_t m, int64_t n, int64_t members, int64_t p, size_t workspace) {
          return rlsignals::cuda::launch_delta_products<float>(
              nullptr, nullptr, type, 2, m, n, m * n, n, m * n, n, nullptr, members, nullptr, p, nullptr, nullptr,
              nullptr, nullptr, workspace, nullptr);
        }
        int main() {
          // no workspace for one row slab (m <= 128); linear in the members beyond
          if (delta_products_workspace_bytes<float>(4, 128, 64, 16) != 0) return 1;
          const size_t one = delta_products_workspace_bytes<double>(1, 1000, 64, 16);
          if (one == 0 || delta_products_workspace_bytes<double>(3, 1000, 64, 16) != 3 * one) return 2;
          const size_t need = delta_products_workspace_bytes<float>(1, 1000, 64, 16);
          if (launch(ElemType::kFloat32, 8, 8, 1, 0, 0) != cudaErrorInvalidValue) return 3;
          if (launch(ElemType::kFloat32, 8, 8, 1, 33, 0) != cudaErrorInvalidValue) return 4;
          if (launch(ElemType::kBFloat16, -1, 8, 1, 4, 0) != cudaErrorInvalidValue) return 5;
          if (launch(ElemType::kFloat16, 8, -8, 1, 4, 0) != cudaErrorInvalidValue) return 6;
          if (launch(ElemType::kFloat32, 8, 8, -1, 4, 0) != cudaErrorInvalidValue) return 7;
          if (launch(static_cast<ElemType>(7), 8, 8, 1, 4, 0) != cudaErrorInvalidValue) return 8;
          if (launch(ElemType::kFloat32, 1000, 64, 1, 16, need - 1) != cudaErrorInvalidValue) return 9;
          if (launch(ElemType::kFloat32, 1000, 64, 0, 16, 0) != cudaSuccess) return 10;  // no members: no launch
          int devices = 0;
          if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
            // one slab, several slabs (main and summing kernels), and the zero fill of m == 0
            const int64_t shapes[3][2] = {{100, 64}, {1000, 64}, {0, 64}};
            for (const auto& s : shapes) {
              const cudaError_t e = launch(ElemType::kBFloat16, s[0], s[1], 3, 16, 3 * need);
              std::printf("no device; m = %ld: launch returned %d (%s)\\n", static_cast<long>(s[0]),
                          static_cast<int>(e), cudaGetErrorName(e));
              if (e == cudaSuccess) return 11;
            }
          }
          return 0;
        }
        """,
)

KERNELS = [UNIT_SUMS, DELTA_PRODUCTS]


@pytest.fixture(scope="module", params=KERNELS, ids=lambda k: k.name)
def kernel(request) -> CudaKernel:
    return request.param


@pytest.fixture(scope="module")
def kernel_object(kernel, tmp_path_factory) -> Path:
    """The kernel compiled for sm_80 and sm_90 with the plain flags."""
    out = tmp_path_factory.mktemp("nvcc") / f"{kernel.name}.o"
    nvcc(*ARCHS, "-c", "-std=c++17", "-I", CSRC, kernel.source, "-o", out)
    return out


def test_kernel_compiles_for_sm80_and_sm90(kernel_object):
    assert kernel_object.stat().st_size > 0


def test_kernel_compiles_without_warnings_or_spills(kernel, tmp_path):
    """With the extension's flags; any nvcc, host-compiler or ptxas warning
    (register spills and local memory included) fails the build."""
    proc = nvcc(*ARCHS, "-c", "-std=c++17", *TORCH_NVCC_FLAGS, *STRICT, "-Xptxas", "-v",
                "-I", CSRC, kernel.source, "-o", tmp_path / f"{kernel.name}.o")
    report = proc.stdout + proc.stderr
    assert "Compiling entry function" in report and "bytes spill stores" in report, report
    spilled = [line for line in report.splitlines() if "spill" in line and not line.strip().startswith("0 bytes stack")]
    assert not spilled, "\n".join(spilled)


def test_header_is_plain_cpp(kernel, tmp_path):
    """The kernel's .cuh is read by the host compiler (its binding): plain C++17, the documented signatures."""
    src = tmp_path / "check_header.cpp"
    src.write_text(textwrap.dedent(kernel.header_check))
    nvcc("-c", "-std=c++17", "-Xcompiler", "-Wall,-Wextra,-Werror,-pedantic", "-I", CSRC, src,
         "-o", tmp_path / "check_header.o")


def test_host_side_argument_handling(kernel, kernel_object, tmp_path):
    """Link the kernels into a program and call the launcher on the host paths that
    need no GPU: bad sizes are refused, empty work launches nothing, and a real
    launch reports the missing device (or runs, on a GPU machine) instead of crashing."""
    src = tmp_path / "driver.cpp"
    src.write_text(textwrap.dedent(kernel.driver))
    exe = tmp_path / "driver"
    nvcc("-std=c++17", "-I", CSRC, src, kernel_object, "-o", exe)
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"driver exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


@pytest.mark.parametrize("binding", BINDINGS, ids=lambda p: p.name)
def test_binding_compiles_against_torch_headers(binding, tmp_path):
    """A CUDA binding as host code against this torch (CPU builds ship the c10/cuda headers)."""
    torch = pytest.importorskip("torch")
    from torch.utils.cpp_extension import include_paths

    paths = include_paths()
    if not any((Path(p) / "c10" / "cuda" / "CUDAGuard.h").exists() for p in paths):
        pytest.skip(f"this torch ({torch.__version__}) ships no c10/cuda headers")
    isystem = [arg for p in paths for arg in ("-isystem", p)]
    nvcc("-c", "-std=c++17", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE", *isystem, "-I", CSRC,
         "-Xcompiler", "-Wall,-Wextra,-Werror", binding, "-o", tmp_path / "binding.o")
