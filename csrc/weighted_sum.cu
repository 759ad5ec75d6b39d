// CUDA twin of the weighted-sum kernels. Loads and stores in the storage dtype, arithmetic
// in float. Indices are int64. The backward reduction is a per-block partial sum followed
// by a fixed-order reduction: bitwise repeatable, no atomics, no host synchronisation.
#include "cuda_dtype.cuh"
#include "weighted_sum.cuh"

namespace fastdarts {
namespace {


template <typename T>
__global__ void weighted_sum_fwd_kernel(const T* __restrict__ y, const float* __restrict__ w,
                                        T* __restrict__ out, int64_t K, int64_t M) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t m = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; m < M;
       m += stride) {
    float acc = 0.f;
    for (int64_t k = 0; k < K; ++k) acc += w[k] * to_float(y[k * M + m]);
    out[m] = from_float<T>(acc);
  }
}

// One block per chunk of M: writes dy for its chunk and one partial of dw[k] per block.
template <typename T>
__global__ void weighted_sum_bwd_kernel(const T* __restrict__ y, const float* __restrict__ w,
                                        const T* __restrict__ g, T* __restrict__ dy,
                                        float* __restrict__ partials, int64_t K, int64_t M) {
  __shared__ float shared[kWeightedSumThreads];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t k = 0; k < K; ++k) {
    float acc = 0.f;
    const float wk = w[k];
    for (int64_t m = first; m < M; m += stride) {
      const float gm = to_float(g[m]);
      acc += gm * to_float(y[k * M + m]);
      if (dy != nullptr) dy[k * M + m] = from_float<T>(wk * gm);
    }
    shared[threadIdx.x] = acc;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
      if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
      __syncthreads();
    }
    if (threadIdx.x == 0) partials[k * gridDim.x + blockIdx.x] = shared[0];
    __syncthreads();
  }
}

// dw[k] = sum of the K-th row of partials, in block order (deterministic).
__global__ void weighted_sum_reduce_kernel(const float* __restrict__ partials,
                                           float* __restrict__ dw, int64_t num_blocks) {
  __shared__ float shared[kWeightedSumThreads];
  const int64_t k = blockIdx.x;
  float acc = 0.f;
  for (int64_t b = threadIdx.x; b < num_blocks; b += blockDim.x) acc += partials[k * num_blocks + b];
  shared[threadIdx.x] = acc;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) dw[k] = shared[0];
}

int64_t fwd_blocks(int64_t M) {
  const int64_t blocks = (M + kWeightedSumThreads - 1) / kWeightedSumThreads;
  return blocks < 65535 * 8 ? (blocks > 0 ? blocks : 1) : 65535 * 8;
}

template <typename T>
cudaError_t fwd(const WeightedSumParams& p, cudaStream_t stream) {
  weighted_sum_fwd_kernel<T><<<static_cast<unsigned>(fwd_blocks(p.M)), kWeightedSumThreads, 0,
                               stream>>>(static_cast<const T*>(p.y),
                                         static_cast<const float*>(p.w),
                                         static_cast<T*>(p.out), p.K, p.M);
  return cudaGetLastError();
}

template <typename T>
cudaError_t bwd(const WeightedSumParams& p, cudaStream_t stream) {
  auto* partials = static_cast<float*>(p.partials);
  weighted_sum_bwd_kernel<T><<<static_cast<unsigned>(p.num_blocks), kWeightedSumThreads, 0,
                               stream>>>(static_cast<const T*>(p.y),
                                         static_cast<const float*>(p.w),
                                         static_cast<const T*>(p.g), static_cast<T*>(p.dy),
                                         partials, p.K, p.M);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  weighted_sum_reduce_kernel<<<static_cast<unsigned>(p.K), kWeightedSumThreads, 0, stream>>>(
      partials, static_cast<float*>(p.dw), p.num_blocks);
  return cudaGetLastError();
}

}  // namespace

int64_t weighted_sum_bwd_blocks(int64_t M) {
  // Enough blocks to fill a large GPU, few enough that the partials stay tiny.
  const int64_t blocks = (M + kWeightedSumThreads * 8 - 1) / (kWeightedSumThreads * 8);
  return blocks < 1 ? 1 : (blocks > 1024 ? 1024 : blocks);
}

cudaError_t launch_weighted_sum_fwd(const WeightedSumParams& p, cudaStream_t stream) {
  switch (p.dtype) {
    case DType::kFloat32: return fwd<float>(p, stream);
    case DType::kFloat16: return fwd<__half>(p, stream);
    case DType::kBFloat16: return fwd<__nv_bfloat16>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t launch_weighted_sum_bwd(const WeightedSumParams& p, cudaStream_t stream) {
  switch (p.dtype) {
    case DType::kFloat32: return bwd<float>(p, stream);
    case DType::kFloat16: return bwd<__half>(p, stream);
    case DType::kBFloat16: return bwd<__nv_bfloat16>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace fastdarts
