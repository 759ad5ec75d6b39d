// CUDA twin of the fused mixed-op kernels (formulas in mixed_op.h). Loads and stores in the
// storage dtype, arithmetic in float, int64 indices. Reductions: one block per (row chunk,
// channel) writes a partial, a second kernel merges the partials of a channel in chunk
// order (Chan's formula for the variance): bitwise repeatable, no atomics, no host sync.
#include "cuda_dtype.cuh"
#include "mixed_op.cuh"

namespace fastdarts {
namespace {


__device__ __forceinline__ float load_or(const float* p, int64_t c, float fallback) {
  return p == nullptr ? fallback : p[c];
}

struct Layout {
  int64_t C, S, inner_c, inner_s;
  __device__ __forceinline__ int64_t offset(int64_t row, int64_t c) const {
    const int64_t n = row / S, s = row - n * S;
    return n * C * S + c * inner_c + s * inner_s;
  }
  __device__ __forceinline__ int64_t channel(int64_t i) const { return (i / inner_c) % C; }
};

Layout make_layout(const BnTailParams& p) {
  return p.channels_last ? Layout{p.C, p.S, 1, p.C} : Layout{p.C, p.S, p.S, 1};
}

// Last row (exclusive) of the chunk starting at `begin`.
__device__ __forceinline__ int64_t chunk_end(int64_t begin, int64_t rows_per_chunk,
                                             int64_t rows) {
  return begin + rows_per_chunk < rows ? begin + rows_per_chunk : rows;
}

__device__ float block_sum(float v, float* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
    __syncthreads();
  }
  const float total = shared[0];
  __syncthreads();
  return total;
}

// Block (q, c): mean and M2 of channel c over rows [q*rows_per_chunk, ...).
template <typename T>
__global__ void stats_partial_kernel(const T* __restrict__ z, Layout L, int64_t rows,
                                     int64_t rows_per_chunk, float* __restrict__ part_mean,
                                     float* __restrict__ part_m2) {
  __shared__ float shared[kBnThreads];
  const int64_t q = blockIdx.x, c = blockIdx.y;
  const int64_t begin = q * rows_per_chunk;
  const int64_t end = chunk_end(begin, rows_per_chunk, rows);
  float s = 0.f;
  for (int64_t r = begin + threadIdx.x; r < end; r += blockDim.x) s += to_float(z[L.offset(r, c)]);
  const float n = static_cast<float>(end > begin ? end - begin : 0);
  const float total = block_sum(s, shared);  // every thread takes part, n is block-uniform
  const float mean = n > 0 ? total / n : 0.f;
  float m2 = 0.f;
  for (int64_t r = begin + threadIdx.x; r < end; r += blockDim.x) {
    const float d = to_float(z[L.offset(r, c)]) - mean;
    m2 += d * d;
  }
  m2 = block_sum(m2, shared);
  if (threadIdx.x == 0) {
    part_mean[q * L.C + c] = mean;
    part_m2[q * L.C + c] = m2;
  }
}

// One thread per channel: Chan's parallel merge of the chunk partials, in chunk order.
__global__ void stats_finalize_kernel(const float* __restrict__ part_mean,
                                      const float* __restrict__ part_m2, int64_t C,
                                      int64_t chunks, int64_t rows, int64_t rows_per_chunk,
                                      float eps, float* __restrict__ mean_out,
                                      float* __restrict__ var_out, float* __restrict__ rstd_out,
                                      float* __restrict__ running_mean,
                                      float* __restrict__ running_var,
                                      int64_t* __restrict__ num_batches_tracked, float momentum) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float count = 0.f, mean = 0.f, m2 = 0.f;
  for (int64_t q = 0; q < chunks; ++q) {
    const int64_t begin = q * rows_per_chunk;
    const int64_t end = chunk_end(begin, rows_per_chunk, rows);
    if (end <= begin) break;
    const float nb = static_cast<float>(end - begin);
    const float mb = part_mean[q * C + c];
    const float delta = mb - mean;
    const float total = count + nb;
    mean += delta * (nb / total);
    m2 += part_m2[q * C + c] + delta * delta * (count * nb / total);
    count = total;
  }
  const float var = m2 / count;
  mean_out[c] = mean;
  var_out[c] = var;
  rstd_out[c] = rsqrtf(var + eps);
  if (running_mean != nullptr) {  // nn.BatchNorm2d's update, unbiased variance
    const float unbias = static_cast<float>(rows) / fmaxf(static_cast<float>(rows - 1), 1.f);
    running_mean[c] = (1.f - momentum) * running_mean[c] + momentum * mean;
    running_var[c] = (1.f - momentum) * running_var[c] + momentum * var * unbias;
  }
  if (c == 0 && num_batches_tracked != nullptr) *num_batches_tracked += 1;
}

template <typename T>
__global__ void grad_reduce_partial_kernel(const T* __restrict__ g, const T* __restrict__ z,
                                           Layout L, int64_t rows, int64_t rows_per_chunk,
                                           const float* __restrict__ mean,
                                           const float* __restrict__ rstd,
                                           float* __restrict__ part_g,
                                           float* __restrict__ part_gx) {
  __shared__ float shared[kBnThreads];
  const int64_t q = blockIdx.x, c = blockIdx.y;
  const int64_t begin = q * rows_per_chunk;
  const int64_t end = chunk_end(begin, rows_per_chunk, rows);
  const float mu = load_or(mean, c, 0.f), rs = load_or(rstd, c, 1.f);
  float sg = 0.f, sgx = 0.f;
  for (int64_t r = begin + threadIdx.x; r < end; r += blockDim.x) {
    const int64_t i = L.offset(r, c);
    const float gv = to_float(g[i]);
    sg += gv;
    sgx += gv * (to_float(z[i]) - mu) * rs;
  }
  sg = block_sum(sg, shared);
  sgx = block_sum(sgx, shared);
  if (threadIdx.x == 0) {
    part_g[q * L.C + c] = sg;
    part_gx[q * L.C + c] = sgx;
  }
}

// Merges the chunk partials of each channel in chunk order. With `dw` (launched as one block)
// it also forms dw[k] = sum_c gamma_c * sum_gx_c + beta_c * sum_g_c: each thread sums its
// channels in order, then a fixed-shape tree: deterministic.
__global__ void grad_reduce_finalize_kernel(const float* __restrict__ part_g,
                                            const float* __restrict__ part_gx, int64_t C,
                                            int64_t chunks, float* __restrict__ sum_g,
                                            float* __restrict__ sum_gx,
                                            const float* __restrict__ gamma,
                                            const float* __restrict__ beta,
                                            float* __restrict__ dw, int64_t k) {
  __shared__ float shared[kBnThreads];
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  float local_dw = 0.f;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < C;
       c += step) {
    float a = 0.f, b = 0.f;
    for (int64_t q = 0; q < chunks; ++q) {
      a += part_g[q * C + c];
      b += part_gx[q * C + c];
    }
    sum_g[c] = a;
    sum_gx[c] = b;
    local_dw += load_or(gamma, c, 1.f) * b + load_or(beta, c, 0.f) * a;
  }
  if (dw == nullptr) return;  // uniform over the launch
  const float total = block_sum(local_dw, shared);
  if (threadIdx.x == 0) dw[k] = total;
}

template <typename T>
__global__ void accumulate_kernel(const T* __restrict__ z, float* __restrict__ acc, Layout L,
                                  int64_t numel, const float* __restrict__ w, int64_t k,
                                  const float* __restrict__ mean, const float* __restrict__ rstd,
                                  const float* __restrict__ gamma,
                                  const float* __restrict__ beta, bool init) {
  const float wk = w[k];
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel;
       i += step) {
    const int64_t c = L.channel(i);
    const float scale = wk * load_or(gamma, c, 1.f) * load_or(rstd, c, 1.f);
    const float val = (to_float(z[i]) - load_or(mean, c, 0.f)) * scale + wk * load_or(beta, c, 0.f);
    acc[i] = init ? val : acc[i] + val;
  }
}

template <typename T>
__global__ void grad_input_kernel(const T* __restrict__ g, const T* __restrict__ z,
                                  T* __restrict__ dz, Layout L, int64_t numel,
                                  const float* __restrict__ w, int64_t k,
                                  const float* __restrict__ mean, const float* __restrict__ rstd,
                                  const float* __restrict__ gamma,
                                  const float* __restrict__ sum_g,
                                  const float* __restrict__ sum_gx, bool centre,
                                  float inv_count) {
  const float wk = w[k];
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel;
       i += step) {
    const int64_t c = L.channel(i);
    const float rs = load_or(rstd, c, 1.f);
    const float a = wk * load_or(gamma, c, 1.f) * rs;
    float v = a * to_float(g[i]);
    if (centre) {
      const float xhat = (to_float(z[i]) - mean[c]) * rs;
      v -= a * (sum_g[c] + xhat * sum_gx[c]) * inv_count;
    }
    dz[i] = from_float<T>(v);
  }
}

unsigned elementwise_blocks(int64_t numel) {
  const int64_t blocks = (numel + kBnThreads - 1) / kBnThreads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 65535 * 8 ? 65535 * 8 : blocks));
}

int64_t rows_per_chunk(const BnTailParams& p) {
  const int64_t rows = p.N * p.S;
  return (rows + p.num_chunks - 1) / p.num_chunks;
}

template <typename T>
cudaError_t stats(const BnTailParams& p, cudaStream_t stream) {
  const Layout L = make_layout(p);
  const int64_t rows = p.N * p.S, rpc = rows_per_chunk(p);
  float* part_mean = static_cast<float*>(p.partials);
  float* part_m2 = part_mean + p.num_chunks * p.C;
  stats_partial_kernel<T><<<dim3(static_cast<unsigned>(p.num_chunks), static_cast<unsigned>(p.C)),
                            kBnThreads, 0, stream>>>(static_cast<const T*>(p.z), L, rows, rpc,
                                                     part_mean, part_m2);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  stats_finalize_kernel<<<static_cast<unsigned>((p.C + kBnThreads - 1) / kBnThreads), kBnThreads,
                          0, stream>>>(part_mean, part_m2, p.C, p.num_chunks, rows, rpc,
                                       static_cast<float>(p.eps), static_cast<float*>(p.out0),
                                       static_cast<float*>(p.out1), static_cast<float*>(p.out2),
                                       static_cast<float*>(p.running_mean),
                                       static_cast<float*>(p.running_var), p.num_batches_tracked,
                                       static_cast<float>(p.momentum));
  return cudaGetLastError();
}

template <typename T>
cudaError_t grad_reduce(const BnTailParams& p, cudaStream_t stream) {
  const Layout L = make_layout(p);
  const int64_t rows = p.N * p.S, rpc = rows_per_chunk(p);
  float* part_g = static_cast<float*>(p.partials);
  float* part_gx = part_g + p.num_chunks * p.C;
  grad_reduce_partial_kernel<T>
      <<<dim3(static_cast<unsigned>(p.num_chunks), static_cast<unsigned>(p.C)), kBnThreads, 0,
         stream>>>(static_cast<const T*>(p.g), static_cast<const T*>(p.z), L, rows, rpc,
                   static_cast<const float*>(p.mean), static_cast<const float*>(p.rstd), part_g,
                   part_gx);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  // One block when it also forms dw (a sum over all channels), else one thread per channel.
  const unsigned blocks =
      p.dw != nullptr ? 1u : static_cast<unsigned>((p.C + kBnThreads - 1) / kBnThreads);
  grad_reduce_finalize_kernel<<<blocks, kBnThreads, 0, stream>>>(
      part_g, part_gx, p.C, p.num_chunks, static_cast<float*>(p.out0),
      static_cast<float*>(p.out1), static_cast<const float*>(p.gamma),
      static_cast<const float*>(p.beta), static_cast<float*>(p.dw), p.k);
  return cudaGetLastError();
}

template <typename T>
cudaError_t accumulate(const BnTailParams& p, cudaStream_t stream) {
  const int64_t numel = p.N * p.C * p.S;
  accumulate_kernel<T><<<elementwise_blocks(numel), kBnThreads, 0, stream>>>(
      static_cast<const T*>(p.z), static_cast<float*>(p.acc), make_layout(p), numel,
      static_cast<const float*>(p.w), p.k, static_cast<const float*>(p.mean),
      static_cast<const float*>(p.rstd), static_cast<const float*>(p.gamma),
      static_cast<const float*>(p.beta), p.init);
  return cudaGetLastError();
}

template <typename T>
cudaError_t grad_input(const BnTailParams& p, cudaStream_t stream) {
  const int64_t numel = p.N * p.C * p.S;
  const bool centre = p.batch_stats && p.mean != nullptr;
  grad_input_kernel<T><<<elementwise_blocks(numel), kBnThreads, 0, stream>>>(
      static_cast<const T*>(p.g), static_cast<const T*>(p.z), static_cast<T*>(p.dz),
      make_layout(p), numel, static_cast<const float*>(p.w), p.k,
      static_cast<const float*>(p.mean), static_cast<const float*>(p.rstd),
      static_cast<const float*>(p.gamma), static_cast<const float*>(p.sum_g),
      static_cast<const float*>(p.sum_gx), centre, 1.f / static_cast<float>(p.N * p.S));
  return cudaGetLastError();
}

template <typename T> struct StatsOp { static cudaError_t run(const BnTailParams& p, cudaStream_t s) { return stats<T>(p, s); } };
template <typename T> struct AccumulateOp { static cudaError_t run(const BnTailParams& p, cudaStream_t s) { return accumulate<T>(p, s); } };
template <typename T> struct GradReduceOp { static cudaError_t run(const BnTailParams& p, cudaStream_t s) { return grad_reduce<T>(p, s); } };
template <typename T> struct GradInputOp { static cudaError_t run(const BnTailParams& p, cudaStream_t s) { return grad_input<T>(p, s); } };

}  // namespace

int64_t bn_num_chunks(int64_t rows) {
  // About 2048 rows per block keeps the partials small and the GPU busy for C >= 16.
  const int64_t chunks = (rows + 2047) / 2048;
  return chunks < 1 ? 1 : (chunks > 512 ? 512 : chunks);
}

cudaError_t launch_bn_stats(const BnTailParams& p, cudaStream_t s) { return dispatch_dtype<StatsOp>(p, s); }
cudaError_t launch_bn_accumulate(const BnTailParams& p, cudaStream_t s) { return dispatch_dtype<AccumulateOp>(p, s); }
cudaError_t launch_bn_grad_reduce(const BnTailParams& p, cudaStream_t s) { return dispatch_dtype<GradReduceOp>(p, s); }
cudaError_t launch_bn_grad_input(const BnTailParams& p, cudaStream_t s) { return dispatch_dtype<GradInputOp>(p, s); }

}  // namespace fastdarts
