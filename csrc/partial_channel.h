// Torch-free parameter block shared by the CUDA and C++ CPU kernels of the partial-channel
// combine (PC-DARTS, DESIGN.md §4).
//
// An edge with K partitions of C channels runs its mixed op on the first P = C/K channels of
// x, giving m (N, P, H, W); the other channels bypass it (2x2 max pool, stride 2, on
// reduction edges). The concatenation [m, beta * bypass] is channel-shuffled: channel c goes
// to o = (c % P) * K + c / P. These kernels write that straight into the node output:
//
//   forward   out[n, o] (=|+=) m[n, c]                     c < P   (m already scaled by beta)
//                             beta * bypass(x)[n, c]       c >= P
//   backward  g_m[n, c] = g[n, o]                          c < P
//             dx[n, c] = beta * g[n, o] (routed to the window's first maximum on stride 2)
//             dbeta = sum over c >= P of g[n, o] * bypass(x)[n, c]
//
// with c = (o % K) * P + o / K. Tensors are addressed through their element strides, so any
// layout works; the element loop follows `out`'s (or g's) memory order (NCHW or channels
// last). beta is a device scalar in the accumulation dtype (null: 1). dx is zero-filled by
// the caller. dbeta is reduced in fixed blocks and merged in order: deterministic.
#pragma once
#include <cstdint>

#include "weighted_sum.h"  // DType

namespace fastdarts {

struct PartialChannelParams {
  DType dtype;              // storage dtype of every activation
  int64_t N, C, K, P;       // batch, channels, partitions, P = C / K
  int64_t H, W;             // spatial size of the edge output
  int64_t stride;           // 1, or 2 (bypass max-pooled 2x2)
  int64_t Hx, Wx;           // spatial size of x
  bool channels_last;       // element loop order of out / g
  int64_t so[4], sm[4], sx[4];  // element strides of out/g, m/g_m, x/dx (n, c, h, w)
  void* out;                // (N, C, H, W) forward output / node accumulator
  const void* m;            // (N, P, H, W) mixed-op output
  const void* x;            // (N, C, Hx, Wx) edge input
  const void* beta;         // scalar, accumulation dtype, or null (1)
  bool accumulate;          // forward: add into out instead of writing
  const void* g;            // (N, C, H, W) gradient of the node output
  void* g_m;                // (N, P, H, W) gradient of m
  void* dx;                 // (N, C, Hx, Wx) gradient of x (bypass channels), zero-filled
  void* dbeta_partials;     // num_blocks accumulation-dtype values
  int64_t num_blocks;       // blocks of the dbeta reduction
};

// C++ CPU kernels (float32 and float64 storage).
void partial_combine_fwd_cpu(const PartialChannelParams& p);
void partial_combine_bwd_cpu(const PartialChannelParams& p);

}  // namespace fastdarts
