// Element types the kernels read. Plain C++ (no torch headers), shared by the
// CPU kernels, the CUDA kernels and the bindings.
#pragma once
#include <cstdint>

namespace rlsignals {

enum class ElemType : int32_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

}  // namespace rlsignals
