// Torch-free parameter block shared by the CUDA and C++ CPU weighted-sum kernels.
//
//   forward:  out[m]  = sum_k w[k] * y[k, m]                 (y is (K, M), row-major)
//   backward: dy[k,m] = w[k] * g[m];  dw[k] = sum_m g[m] * y[k, m]
//
// Sums accumulate in float (double for double inputs). The backward reduction writes one
// partial per (k, block) and reduces them in a fixed order, so it is deterministic.
#pragma once
#include <cstdint>

namespace fastdarts {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

struct WeightedSumParams {
  DType dtype;        // dtype of y, g, out, dy
  int64_t K;          // number of stacked inputs (ops of an edge)
  int64_t M;          // elements per input; int64 because ImageNet batches pass 2^31
  const void* y;      // (K, M)
  const void* w;      // (K,), float (double when dtype is kFloat64)
  const void* g;      // (M,) upstream gradient (backward only)
  void* out;          // (M,) forward output
  void* dy;           // (K, M) backward output, may be null when y needs no gradient
  void* dw;           // (K,) backward output, float (double for kFloat64)
  void* partials;     // (K, num_blocks) workspace of the backward reduction (CUDA)
  int64_t num_blocks; // blocks of the backward reduction (CUDA)
};

// C++ CPU kernels (float32 and float64).
void weighted_sum_fwd_cpu(const WeightedSumParams& p);
void weighted_sum_bwd_cpu(const WeightedSumParams& p);

}  // namespace fastdarts
