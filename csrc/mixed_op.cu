// CUDA twin of the fused mixed-op kernels (formulas in mixed_op.h). Loads and stores in the
// storage dtype, arithmetic in float, int64 indices. Each launch runs a batch of up to
// kMaxTailOps ops of one edge (mixed_op.cuh), so an edge's tails cost a handful of launches
// whatever its op count. Reductions: one block per (row chunk, channel, op) writes a
// partial, a second kernel merges the partials of a channel in chunk order (Chan's formula
// for the variance): bitwise repeatable, no atomics, no host sync.
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

// Block (q, c, j): mean and M2 of channel c of op j over rows [q*rows_per_chunk, ...).
template <typename T>
__global__ void stats_partial_kernel(const __grid_constant__ BnTailBatch b, Layout L,
                                     int64_t rows, int64_t rows_per_chunk) {
  __shared__ float shared[kBnThreads];
  const BnTailParams& t = b.op[blockIdx.z];
  const T* __restrict__ z = static_cast<const T*>(t.z);
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
    float* part_mean = static_cast<float*>(t.partials);
    part_mean[q * L.C + c] = mean;
    part_mean[(t.num_chunks + q) * L.C + c] = m2;
  }
}

// Thread (c, j): Chan's parallel merge of the chunk partials of channel c of op j, in chunk
// order, and nn.BatchNorm2d's running update.
__global__ void stats_finalize_kernel(const __grid_constant__ BnTailBatch b, int64_t rows,
                                      int64_t rows_per_chunk) {
  const BnTailParams& t = b.op[blockIdx.y];
  const int64_t C = t.C, chunks = t.num_chunks;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const float* part_mean = static_cast<const float*>(t.partials);
  const float* part_m2 = part_mean + chunks * C;
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
  static_cast<float*>(t.out0)[c] = mean;
  static_cast<float*>(t.out1)[c] = var;
  static_cast<float*>(t.out2)[c] = rsqrtf(var + static_cast<float>(t.eps));
  if (t.running_mean != nullptr) {  // nn.BatchNorm2d's update, unbiased variance
    const float momentum = static_cast<float>(t.momentum);
    const float unbias = static_cast<float>(rows) / fmaxf(static_cast<float>(rows - 1), 1.f);
    float* running_mean = static_cast<float*>(t.running_mean);
    float* running_var = static_cast<float*>(t.running_var);
    running_mean[c] = (1.f - momentum) * running_mean[c] + momentum * mean;
    running_var[c] = (1.f - momentum) * running_var[c] + momentum * var * unbias;
  }
  if (c == 0 && t.num_batches_tracked != nullptr) *t.num_batches_tracked += 1;
}

// Block (q, c, j): sums of g and g * xhat_j of channel c over one row chunk.
template <typename T>
__global__ void grad_reduce_partial_kernel(const __grid_constant__ BnTailBatch b, Layout L,
                                           int64_t rows, int64_t rows_per_chunk) {
  __shared__ float shared[kBnThreads];
  const BnTailParams& t = b.op[blockIdx.z];
  const T* __restrict__ g = static_cast<const T*>(t.g);
  const T* __restrict__ z = static_cast<const T*>(t.z);
  const int64_t q = blockIdx.x, c = blockIdx.y;
  const int64_t begin = q * rows_per_chunk;
  const int64_t end = chunk_end(begin, rows_per_chunk, rows);
  const float mu = load_or(static_cast<const float*>(t.mean), c, 0.f);
  const float rs = load_or(static_cast<const float*>(t.rstd), c, 1.f);
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
    float* part_g = static_cast<float*>(t.partials);
    part_g[q * L.C + c] = sg;
    part_g[(t.num_chunks + q) * L.C + c] = sgx;
  }
}

// Blocks (., j) merge the chunk partials of op j's channels in chunk order. With `dw`
// (launched as one block per op) it also forms dw[k_j] = sum_c gamma_c * sum_gx_c +
// beta_c * sum_g_c: each thread sums its channels in order, then a fixed-shape tree:
// deterministic.
__global__ void grad_reduce_finalize_kernel(const __grid_constant__ BnTailBatch b) {
  __shared__ float shared[kBnThreads];
  const BnTailParams& t = b.op[blockIdx.y];
  const int64_t C = t.C, chunks = t.num_chunks;
  const float* part_g = static_cast<const float*>(t.partials);
  const float* part_gx = part_g + chunks * C;
  const float* gamma = static_cast<const float*>(t.gamma);
  const float* beta = static_cast<const float*>(t.beta);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  float local_dw = 0.f;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < C;
       c += step) {
    float a = 0.f, s = 0.f;
    for (int64_t q = 0; q < chunks; ++q) {
      a += part_g[q * C + c];
      s += part_gx[q * C + c];
    }
    static_cast<float*>(t.out0)[c] = a;
    static_cast<float*>(t.out1)[c] = s;
    local_dw += load_or(gamma, c, 1.f) * s + load_or(beta, c, 0.f) * a;
  }
  if (t.dw == nullptr) return;  // uniform over the launch
  const float total = block_sum(local_dw, shared);
  if (threadIdx.x == 0) static_cast<float*>(t.dw)[t.k] = total;
}

// w_k * (gamma_c * (z - mean_c) * rstd_c + beta_c) of op j at element i of channel c.
template <typename T>
__device__ __forceinline__ float tail_term(const BnTailParams& t, int64_t i, int64_t c) {
  const float wk = static_cast<const float*>(t.w)[t.k];
  const float* mean = static_cast<const float*>(t.mean);
  const float scale = wk * load_or(static_cast<const float*>(t.gamma), c, 1.f) *
                      load_or(static_cast<const float*>(t.rstd), c, 1.f);
  return (to_float(static_cast<const T*>(t.z)[i]) - load_or(mean, c, 0.f)) * scale +
         wk * load_or(static_cast<const float*>(t.beta), c, 0.f);
}

// acc (=|+=) the sum of the batch's terms, added in op order: the same float additions as
// one launch per op, so the result does not depend on how the ops were batched.
template <typename T>
__global__ void accumulate_kernel(const __grid_constant__ BnTailBatch b, Layout L,
                                  int64_t numel) {
  float* __restrict__ acc = static_cast<float*>(b.op[0].acc);
  const bool init = b.op[0].init;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel;
       i += step) {
    const int64_t c = L.channel(i);
    float v = tail_term<T>(b.op[0], i, c);
    if (!init) v = acc[i] + v;
    for (int j = 1; j < b.n; ++j) v += tail_term<T>(b.op[j], i, c);
    acc[i] = v;
  }
}

// dz_j of every op of the batch at element i (g read once).
template <typename T>
__global__ void grad_input_kernel(const __grid_constant__ BnTailBatch b, Layout L,
                                  int64_t numel, float inv_count) {
  const T* __restrict__ g = static_cast<const T*>(b.op[0].g);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel;
       i += step) {
    const int64_t c = L.channel(i);
    const float gv = to_float(g[i]);
    for (int j = 0; j < b.n; ++j) {
      const BnTailParams& t = b.op[j];
      const float* mean = static_cast<const float*>(t.mean);
      const float rs = load_or(static_cast<const float*>(t.rstd), c, 1.f);
      const float a = static_cast<const float*>(t.w)[t.k] *
                      load_or(static_cast<const float*>(t.gamma), c, 1.f) * rs;
      float v = a * gv;
      if (t.batch_stats && mean != nullptr) {
        const float xhat = (to_float(static_cast<const T*>(t.z)[i]) - mean[c]) * rs;
        v -= a * (static_cast<const float*>(t.sum_g)[c] +
                  xhat * static_cast<const float*>(t.sum_gx)[c]) * inv_count;
      }
      static_cast<T*>(t.dz)[i] = from_float<T>(v);
    }
  }
}

unsigned elementwise_blocks(int64_t numel) {
  const int64_t blocks = (numel + kBnThreads - 1) / kBnThreads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 65535 * 8 ? 65535 * 8 : blocks));
}

unsigned channel_blocks(int64_t C) {
  return static_cast<unsigned>((C + kBnThreads - 1) / kBnThreads);
}

int64_t rows_per_chunk(const BnTailParams& p) {
  const int64_t rows = p.N * p.S;
  return (rows + p.num_chunks - 1) / p.num_chunks;
}

dim3 reduction_grid(const BnTailBatch& b) {
  return dim3(static_cast<unsigned>(b.op[0].num_chunks), static_cast<unsigned>(b.op[0].C),
              static_cast<unsigned>(b.n));
}

template <typename T>
cudaError_t stats(const BnTailBatch& b, cudaStream_t stream) {
  const BnTailParams& p = b.op[0];
  const int64_t rows = p.N * p.S, rpc = rows_per_chunk(p);
  stats_partial_kernel<T><<<reduction_grid(b), kBnThreads, 0, stream>>>(b, make_layout(p), rows,
                                                                         rpc);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  stats_finalize_kernel<<<dim3(channel_blocks(p.C), static_cast<unsigned>(b.n)), kBnThreads, 0,
                          stream>>>(b, rows, rpc);
  return cudaGetLastError();
}

template <typename T>
cudaError_t grad_reduce(const BnTailBatch& b, cudaStream_t stream) {
  const BnTailParams& p = b.op[0];
  const int64_t rows = p.N * p.S, rpc = rows_per_chunk(p);
  grad_reduce_partial_kernel<T><<<reduction_grid(b), kBnThreads, 0, stream>>>(
      b, make_layout(p), rows, rpc);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  // One block per op when it also forms dw (a sum over all channels), else one thread per
  // channel. The binding gives every op of a call a dw, or none.
  const unsigned blocks = p.dw != nullptr ? 1u : channel_blocks(p.C);
  grad_reduce_finalize_kernel<<<dim3(blocks, static_cast<unsigned>(b.n)), kBnThreads, 0,
                                stream>>>(b);
  return cudaGetLastError();
}

template <typename T>
cudaError_t accumulate(const BnTailBatch& b, cudaStream_t stream) {
  const BnTailParams& p = b.op[0];
  const int64_t numel = p.N * p.C * p.S;
  accumulate_kernel<T><<<elementwise_blocks(numel), kBnThreads, 0, stream>>>(
      b, make_layout(p), numel);
  return cudaGetLastError();
}

template <typename T>
cudaError_t grad_input(const BnTailBatch& b, cudaStream_t stream) {
  const BnTailParams& p = b.op[0];
  const int64_t numel = p.N * p.C * p.S;
  grad_input_kernel<T><<<elementwise_blocks(numel), kBnThreads, 0, stream>>>(
      b, make_layout(p), numel, 1.f / static_cast<float>(p.N * p.S));
  return cudaGetLastError();
}

template <typename T> struct StatsOp { static cudaError_t run(const BnTailBatch& b, cudaStream_t s) { return stats<T>(b, s); } };
template <typename T> struct AccumulateOp { static cudaError_t run(const BnTailBatch& b, cudaStream_t s) { return accumulate<T>(b, s); } };
template <typename T> struct GradReduceOp { static cudaError_t run(const BnTailBatch& b, cudaStream_t s) { return grad_reduce<T>(b, s); } };
template <typename T> struct GradInputOp { static cudaError_t run(const BnTailBatch& b, cudaStream_t s) { return grad_input<T>(b, s); } };

}  // namespace

int64_t bn_num_chunks(int64_t rows) {
  // About 2048 rows per block keeps the partials small and the GPU busy for C >= 16.
  const int64_t chunks = (rows + 2047) / 2048;
  return chunks < 1 ? 1 : (chunks > 512 ? 512 : chunks);
}

cudaError_t launch_bn_stats(const BnTailBatch& b, cudaStream_t s) { return dispatch_dtype<StatsOp>(b, s); }
cudaError_t launch_bn_accumulate(const BnTailBatch& b, cudaStream_t s) { return dispatch_dtype<AccumulateOp>(b, s); }
cudaError_t launch_bn_grad_reduce(const BnTailBatch& b, cudaStream_t s) { return dispatch_dtype<GradReduceOp>(b, s); }
cudaError_t launch_bn_grad_input(const BnTailBatch& b, cudaStream_t s) { return dispatch_dtype<GradInputOp>(b, s); }

}  // namespace fastdarts
