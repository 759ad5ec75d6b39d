// CUDA twin of the partial-channel combine (formulas in partial_channel.h). Loads and stores
// in the storage dtype, arithmetic in float, int64 indices. The backward's dbeta: each block
// reduces a fixed range of elements into one partial; the binding sums the partials in order.
#include "cuda_dtype.cuh"
#include "partial_channel.cuh"

namespace fastdarts {
namespace {

struct Shape {
  int64_t N, C, K, P, H, W, stride;
  bool channels_last;
  int64_t so[4], sm[4], sx[4];
};

Shape make_shape(const PartialChannelParams& p) {
  Shape s{p.N, p.C, p.K, p.P, p.H, p.W, p.stride, p.channels_last, {}, {}, {}};
  for (int d = 0; d < 4; ++d) {
    s.so[d] = p.so[d];
    s.sm[d] = p.sm[d];
    s.sx[d] = p.sx[d];
  }
  return s;
}

__device__ __forceinline__ void decompose(const Shape& s, int64_t i, int64_t& n, int64_t& o,
                                          int64_t& h, int64_t& w) {
  if (s.channels_last) {
    o = i % s.C; i /= s.C;
    w = i % s.W; i /= s.W;
    h = i % s.H; n = i / s.H;
  } else {
    w = i % s.W; i /= s.W;
    h = i % s.H; i /= s.H;
    o = i % s.C; n = i / s.C;
  }
}

__device__ __forceinline__ int64_t at4(const int64_t* st, int64_t n, int64_t c, int64_t h,
                                       int64_t w) {
  return n * st[0] + c * st[1] + h * st[2] + w * st[3];
}

// Offset in x of the bypass value: the 2x2 window's first maximum on stride 2 (NaN wins).
template <typename T>
__device__ __forceinline__ int64_t bypass_offset(const Shape& s, const T* x, int64_t n,
                                                 int64_t c, int64_t h, int64_t w) {
  if (s.stride == 1) return at4(s.sx, n, c, h, w);
  int64_t best = at4(s.sx, n, c, 2 * h, 2 * w);
  float best_v = to_float(x[best]);
  if (isnan(best_v)) return best;
  for (int k = 1; k < 4; ++k) {
    const int64_t off = at4(s.sx, n, c, 2 * h + k / 2, 2 * w + k % 2);
    const float v = to_float(x[off]);
    if (v > best_v || isnan(v)) {
      best = off;
      best_v = v;
      if (isnan(v)) break;
    }
  }
  return best;
}

template <typename T>
__global__ void fwd_kernel(Shape s, T* __restrict__ out, const T* __restrict__ m,
                           const T* __restrict__ x, const float* __restrict__ beta_ptr,
                           bool accumulate, int64_t total) {
  const float beta = beta_ptr == nullptr ? 1.f : *beta_ptr;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t n, o, h, w;
    decompose(s, i, n, o, h, w);
    const int64_t c = (o % s.K) * s.P + o / s.K;
    const float v = c < s.P ? to_float(m[at4(s.sm, n, c, h, w)])
                            : beta * to_float(x[bypass_offset(s, x, n, c, h, w)]);
    const int64_t off = at4(s.so, n, o, h, w);
    out[off] = from_float<T>(accumulate ? to_float(out[off]) + v : v);
  }
}

template <typename T>
__global__ void bwd_kernel(Shape s, const T* __restrict__ g, const T* __restrict__ x,
                           T* __restrict__ g_m, T* __restrict__ dx,
                           const float* __restrict__ beta_ptr, float* __restrict__ partials,
                           int64_t total, int64_t per_block) {
  __shared__ float shared[kPcThreads];
  const float beta = beta_ptr == nullptr ? 1.f : *beta_ptr;
  const int64_t begin = blockIdx.x * per_block;
  const int64_t end = begin + per_block < total ? begin + per_block : total;
  float sum = 0.f;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    int64_t n, o, h, w;
    decompose(s, i, n, o, h, w);
    const int64_t c = (o % s.K) * s.P + o / s.K;
    const T gv = g[at4(s.so, n, o, h, w)];
    if (c < s.P) {
      g_m[at4(s.sm, n, c, h, w)] = gv;
    } else {
      const int64_t src = bypass_offset(s, x, n, c, h, w);
      dx[src] = from_float<T>(beta * to_float(gv));
      sum += to_float(gv) * to_float(x[src]);
    }
  }
  shared[threadIdx.x] = sum;
  __syncthreads();
  for (int k = blockDim.x / 2; k > 0; k >>= 1) {
    if (threadIdx.x < k) shared[threadIdx.x] += shared[threadIdx.x + k];
    __syncthreads();
  }
  if (threadIdx.x == 0) partials[blockIdx.x] = shared[0];
}

template <typename T>
cudaError_t fwd(const PartialChannelParams& p, cudaStream_t stream) {
  const int64_t total = p.N * p.C * p.H * p.W;
  if (total == 0) return cudaSuccess;
  int64_t blocks = (total + kPcThreads - 1) / kPcThreads;
  blocks = blocks > 65535 * 32 ? 65535 * 32 : blocks;
  fwd_kernel<T><<<static_cast<unsigned>(blocks), kPcThreads, 0, stream>>>(
      make_shape(p), static_cast<T*>(p.out), static_cast<const T*>(p.m),
      static_cast<const T*>(p.x), static_cast<const float*>(p.beta), p.accumulate, total);
  return cudaGetLastError();
}

template <typename T>
cudaError_t bwd(const PartialChannelParams& p, cudaStream_t stream) {
  const int64_t total = p.N * p.C * p.H * p.W;
  if (total == 0) return cudaSuccess;
  const int64_t per_block = (total + p.num_blocks - 1) / p.num_blocks;
  bwd_kernel<T><<<static_cast<unsigned>(p.num_blocks), kPcThreads, 0, stream>>>(
      make_shape(p), static_cast<const T*>(p.g), static_cast<const T*>(p.x),
      static_cast<T*>(p.g_m), static_cast<T*>(p.dx), static_cast<const float*>(p.beta),
      static_cast<float*>(p.dbeta_partials), total, per_block);
  return cudaGetLastError();
}

template <typename T> struct FwdOp { static cudaError_t run(const PartialChannelParams& p, cudaStream_t s) { return fwd<T>(p, s); } };
template <typename T> struct BwdOp { static cudaError_t run(const PartialChannelParams& p, cudaStream_t s) { return bwd<T>(p, s); } };

}  // namespace

int64_t partial_combine_bwd_blocks(int64_t elements) {
  // About 8192 elements per block: enough blocks to fill the GPU, few partials to merge.
  const int64_t blocks = (elements + 8191) / 8192;
  return blocks < 1 ? 1 : (blocks > 4096 ? 4096 : blocks);
}

cudaError_t launch_partial_combine_fwd(const PartialChannelParams& p, cudaStream_t s) { return dispatch_dtype<FwdOp>(p, s); }
cudaError_t launch_partial_combine_bwd(const PartialChannelParams& p, cudaStream_t s) { return dispatch_dtype<BwdOp>(p, s); }

}  // namespace fastdarts
