// The stored element types as the CUDA kernels read them: one element, or 16
// bytes (one uint4) unpacked to floats. Device code only, shared by the .cu files.
#pragma once
#include <cuda_fp16.h>

#include <cstdint>

namespace rlsignals::cuda {

struct F32 {
  using Storage = float;
  static constexpr int kVec = 4;  // elements per 16 bytes
  static __device__ __forceinline__ float to_float(float v) { return v; }
  static __device__ __forceinline__ void unpack(const uint4& v, float (&out)[4]) {
    out[0] = __uint_as_float(v.x);
    out[1] = __uint_as_float(v.y);
    out[2] = __uint_as_float(v.z);
    out[3] = __uint_as_float(v.w);
  }
};

struct BF16 {
  using Storage = unsigned short;
  static constexpr int kVec = 8;
  static __device__ __forceinline__ float to_float(unsigned short b) {
    return __uint_as_float(static_cast<unsigned>(b) << 16);
  }
  // Each 32-bit word holds two elements, the lower-addressed one in the low half.
  static __device__ __forceinline__ void unpack(const uint4& v, float (&out)[8]) {
    const unsigned words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      out[2 * i] = __uint_as_float(words[i] << 16);
      out[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
    }
  }
};

struct F16 {
  using Storage = unsigned short;
  static constexpr int kVec = 8;
  static __device__ __forceinline__ float to_float(unsigned short b) { return __half2float(__ushort_as_half(b)); }
  static __device__ __forceinline__ void unpack(const uint4& v, float (&out)[8]) {
    const unsigned words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      out[2 * i] = to_float(static_cast<unsigned short>(words[i] & 0xffffu));
      out[2 * i + 1] = to_float(static_cast<unsigned short>(words[i] >> 16));
    }
  }
};

}  // namespace rlsignals::cuda
