// Loads and stores in the storage dtype, arithmetic in float: shared by the CUDA kernels.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "weighted_sum.h"  // DType

namespace fastdarts {

template <typename T> __device__ __forceinline__ float to_float(T v) { return static_cast<float>(v); }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <typename T> __device__ __forceinline__ T from_float(float v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Runs Op<T>::run(p, stream) with T the CUDA storage type of p.dtype (float64 is CPU-only).
template <template <typename> class Op, typename Params>
cudaError_t dispatch_dtype(const Params& p, cudaStream_t stream) {
  switch (p.dtype) {
    case DType::kFloat32: return Op<float>::run(p, stream);
    case DType::kFloat16: return Op<__half>::run(p, stream);
    case DType::kBFloat16: return Op<__nv_bfloat16>::run(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace fastdarts
