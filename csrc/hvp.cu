// CUDA twin of the finite-difference HVP kernels (formulas in hvp.h). Loads and stores in
// the storage dtype, arithmetic in float; eps is read from the device-side squared norm by
// every thread, so nothing waits on the host. The norm is a per-block partial sum followed by
// one fixed-order block: bitwise repeatable, no atomics.
#include "cuda_dtype.cuh"
#include "hvp.cuh"

namespace fastdarts {
namespace {

__device__ __forceinline__ float epsilon(const float* sq, float r) {
  const float s = *sq;
  return s > 0.f ? r / sqrtf(s) : r;
}

int64_t grid_for(int64_t n) {
  int64_t blocks = (n + kHvpThreads - 1) / kHvpThreads;
  blocks = blocks > 65535 * 32 ? 65535 * 32 : blocks;
  return blocks > 0 ? blocks : 1;
}

template <typename T>
__global__ void virtual_step_kernel(const T* w, const T* __restrict__ g,
                                    const T* __restrict__ m, T* out, int64_t n, float lr,
                                    float mu, float wd) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const float wi = to_float(w[i]);
    const float d = (m != nullptr ? mu * to_float(m[i]) : 0.f) + to_float(g[i]) + wd * wi;
    out[i] = from_float<T>(wi - lr * d);
  }
}

template <typename T>
__global__ void sq_partial_kernel(const T* __restrict__ v, float* __restrict__ partials,
                                  int64_t n) {
  __shared__ float shared[kHvpThreads];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  float acc = 0.f;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const float x = to_float(v[i]);
    acc += x * x;
  }
  shared[threadIdx.x] = acc;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) partials[blockIdx.x] = shared[0];
}

__global__ void sq_final_kernel(const float* __restrict__ partials, float* __restrict__ sq,
                                int64_t num_blocks) {
  __shared__ float shared[kHvpThreads];
  float acc = 0.f;
  for (int64_t b = threadIdx.x; b < num_blocks; b += blockDim.x) acc += partials[b];
  shared[threadIdx.x] = acc;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) *sq = shared[0];
}

template <typename T>
__global__ void perturb_kernel(const T* w, const T* __restrict__ v, const float* sq, T* out,
                               int64_t n, float r, float sign) {
  const float step = sign * epsilon(sq, r);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride)
    out[i] = from_float<T>(to_float(w[i]) + step * to_float(v[i]));
}

template <typename T>
__global__ void combine_kernel(const T* g_val, const T* __restrict__ g_plus,
                               const T* __restrict__ g_minus, const float* sq, T* out,
                               int64_t n, float r, float scale) {
  // Divide by (2 eps), parenthesised: `/ 2 * eps` multiplies by eps (a bug shipped before).
  const float two_eps = 2.f * epsilon(sq, r);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const float fd = (to_float(g_plus[i]) - to_float(g_minus[i])) / two_eps;
    out[i] = from_float<T>((g_val != nullptr ? to_float(g_val[i]) : 0.f) + scale * fd);
  }
}

#define FD_GRID(n) static_cast<unsigned>(grid_for(n)), kHvpThreads, 0, stream

template <typename T>
cudaError_t virtual_step(const HvpParams& p, cudaStream_t stream) {
  if (p.n == 0) return cudaSuccess;
  virtual_step_kernel<T><<<FD_GRID(p.n)>>>(
      static_cast<const T*>(p.w), static_cast<const T*>(p.g), static_cast<const T*>(p.m),
      static_cast<T*>(p.out), p.n, static_cast<float>(p.lr), static_cast<float>(p.momentum),
      static_cast<float>(p.weight_decay));
  return cudaGetLastError();
}

template <typename T>
cudaError_t sq_norm(const HvpParams& p, cudaStream_t stream) {
  sq_partial_kernel<T><<<static_cast<unsigned>(p.num_blocks), kHvpThreads, 0, stream>>>(
      static_cast<const T*>(p.v), static_cast<float*>(p.partials), p.n);
  sq_final_kernel<<<1, kHvpThreads, 0, stream>>>(static_cast<const float*>(p.partials),
                                                  static_cast<float*>(p.sq_out), p.num_blocks);
  return cudaGetLastError();
}

template <typename T>
cudaError_t perturb(const HvpParams& p, cudaStream_t stream) {
  if (p.n == 0) return cudaSuccess;
  perturb_kernel<T><<<FD_GRID(p.n)>>>(
      static_cast<const T*>(p.w), static_cast<const T*>(p.v), static_cast<const float*>(p.sq),
      static_cast<T*>(p.out), p.n, static_cast<float>(p.r), static_cast<float>(p.sign));
  return cudaGetLastError();
}

template <typename T>
cudaError_t combine(const HvpParams& p, cudaStream_t stream) {
  if (p.n == 0) return cudaSuccess;
  combine_kernel<T><<<FD_GRID(p.n)>>>(
      static_cast<const T*>(p.g_val), static_cast<const T*>(p.g_plus),
      static_cast<const T*>(p.g_minus), static_cast<const float*>(p.sq),
      static_cast<T*>(p.out), p.n, static_cast<float>(p.r), static_cast<float>(p.scale));
  return cudaGetLastError();
}
#undef FD_GRID

template <typename T> struct StepOp { static cudaError_t run(const HvpParams& p, cudaStream_t s) { return virtual_step<T>(p, s); } };
template <typename T> struct NormOp { static cudaError_t run(const HvpParams& p, cudaStream_t s) { return sq_norm<T>(p, s); } };
template <typename T> struct PerturbOp { static cudaError_t run(const HvpParams& p, cudaStream_t s) { return perturb<T>(p, s); } };
template <typename T> struct CombineOp { static cudaError_t run(const HvpParams& p, cudaStream_t s) { return combine<T>(p, s); } };

}  // namespace

int64_t hvp_sq_norm_blocks(int64_t n) {
  const int64_t blocks = (n + kHvpThreads * 8 - 1) / (kHvpThreads * 8);
  return blocks < 1 ? 1 : (blocks > 1024 ? 1024 : blocks);
}

cudaError_t launch_hvp_virtual_step(const HvpParams& p, cudaStream_t s) { return dispatch_dtype<StepOp>(p, s); }
cudaError_t launch_hvp_sq_norm(const HvpParams& p, cudaStream_t s) { return dispatch_dtype<NormOp>(p, s); }
cudaError_t launch_hvp_perturb(const HvpParams& p, cudaStream_t s) { return dispatch_dtype<PerturbOp>(p, s); }
cudaError_t launch_hvp_combine(const HvpParams& p, cudaStream_t s) { return dispatch_dtype<CombineOp>(p, s); }

}  // namespace fastdarts
