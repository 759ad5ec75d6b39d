// Torch-free parameter block shared by the CUDA and C++ CPU kernels of the fused mixed op.
//
// One edge computes  out = sum_k w_k * tail_k(z_k)  where z_k = body_k(x) and tail_k is the
// op's final BatchNorm (batch or running statistics, optional affine) or nothing. The
// kernels work on one op at a time, so the `low` memory mode never holds two z_k at once:
//
//   stats        mean_c, var_c (biased), rstd_c = 1/sqrt(var_c + eps) of z over (N, H, W);
//                with running buffers also nn.BatchNorm2d's training update, in the same
//                pass: running = (1 - momentum) * running + momentum * (mean_c, var_c * M/(M-1))
//                with M = N*H*W, and num_batches_tracked += 1
//   accumulate   acc (=|+=) w_k * (gamma_c * (z - mean_c) * rstd_c + beta_c)
//                (no mean/rstd: w_k * z, used for identity and tail-less ops)
//   grad_reduce  sum_g_c = sum g,  sum_gx_c = sum g * xhat  with xhat = (z - mean_c) * rstd_c
//                (or z without normalisation); with a dw buffer also the mixing-weight
//                gradient  dw[k] = sum_c gamma_c * sum_gx_c + beta_c * sum_g_c  in the same
//                call (saves the launches of a separate reduction and scatter per op)
//   grad_input   dz = w_k * gamma_c * rstd_c * (g - sum_g_c / M - xhat * sum_gx_c / M)
//                with batch statistics, dz = w_k * gamma_c * rstd_c * g with fixed ones.
//
// Tensors are (N, C, S=H*W) in NCHW or channels_last (NHWC) order; z, g, dz and acc share the
// layout. Indices are int64. Reductions sum fixed chunks in a fixed order: deterministic.
#pragma once
#include <cstdint>

#include "weighted_sum.h"  // DType

namespace fastdarts {

struct BnTailParams {
  DType dtype;             // storage dtype of z, g and dz
  int64_t N, C, S;         // batch, channels, H*W
  bool channels_last;      // NHWC order instead of NCHW
  const void* z;           // op output before its BN (or the edge input for identity terms)
  const void* g;           // upstream gradient of the edge output
  void* dz;                // gradient of z (grad_input)
  void* acc;               // edge output accumulator, accumulation dtype (accumulate)
  const void* w;           // (K,) mixing weights, accumulation dtype
  int64_t k;               // this op's index into w
  const void* mean;        // (C,) or null: no normalisation
  const void* rstd;        // (C,) or null
  const void* gamma;       // (C,) or null: 1
  const void* beta;        // (C,) or null: 0
  const void* sum_g;       // (C,) from grad_reduce (grad_input)
  const void* sum_gx;      // (C,) from grad_reduce (grad_input)
  bool batch_stats;        // grad_input: the BN normalised with batch statistics
  bool init;               // accumulate: write instead of add
  double eps;              // stats: BN epsilon
  void* out0;              // stats: mean;   grad_reduce: sum_g
  void* out1;              // stats: var;    grad_reduce: sum_gx
  void* dw;                // grad_reduce: (K,) accumulation dtype, entry k written; or null
  void* out2;              // stats: rstd
  void* running_mean;      // stats: (C,) accumulation dtype, or null: no running update
  void* running_var;       // stats: (C,) accumulation dtype (with running_mean)
  int64_t* num_batches_tracked;  // stats: one int64, or null
  double momentum;         // stats: the BN's momentum (with running_mean)
  void* partials;          // CUDA workspace: 3 * num_chunks * C accumulation-dtype values
  int64_t num_chunks;      // CUDA: row chunks of the reductions
};

// Accumulation dtype: double for float64 storage, float otherwise.

// C++ CPU kernels (float32 and float64 storage; reductions accumulate in double).
void bn_stats_cpu(const BnTailParams& p);
void bn_accumulate_cpu(const BnTailParams& p);
void bn_grad_reduce_cpu(const BnTailParams& p);
void bn_grad_input_cpu(const BnTailParams& p);

}  // namespace fastdarts
