// Torch-free parameter block of the depthwise-convolution backward (one filter per channel,
// groups == in_channels == out_channels), the conv that SepConv and DilConv run two or one
// times per candidate op.
//
// Why a kernel of our own: on the CPU, PyTorch's depthwise backward is several times slower
// than its forward as soon as the kernel is 5x5 or dilated (measured at 8x16x32x32,
// channels_last: 5x5 forward 137 us, backward 1,166 us; 3x3 dilation 2: 77 us and 795 us).
// In a DARTS supernet step it was three quarters of all the convolution backward time.
//
// With y[n, c, ho, wo] = sum_{i, j} w[c, i, j] * x[n, c, ho*sh - ph + i*dh, wo*sw - pw + j*dw]
// (x zero outside the image), for a gradient g of y:
//
//   dx[n, c, hi, wi] = sum over (i, j, ho, wo) with ho*sh - ph + i*dh == hi and
//                      wo*sw - pw + j*dw == wi of w[c, i, j] * g[n, c, ho, wo]
//   dw[c, i, j]      = sum over (n, ho, wo) of g[n, c, ho, wo] * x[n, c, hi, wi]
//
// x, g and dx share one dense layout, NCHW or channels last. Every output element is written
// by one thread, summing in a fixed order (dw: per output row in the storage dtype, then
// fixed blocks of rows in double merged in order), so the results depend on the shape only,
// never on the thread count: bitwise repeatable.
#pragma once
#include <cstdint>

#include "weighted_sum.h"  // DType

namespace fastdarts {

struct DepthwiseConvParams {
  DType dtype;                  // storage dtype of x, weight, g, dx, dweight
  int64_t N, C, H, W;           // x
  int64_t Ho, Wo;               // g
  int64_t kh, kw;               // filter size
  int64_t sh, sw, ph, pw, dh, dw;  // stride, zero padding, dilation
  bool channels_last;           // layout of x, g and dx (dense)
  const void* x;                // (N, C, H, W)
  const void* weight;           // (C, kh, kw) contiguous
  const void* g;                // (N, C, Ho, Wo)
  void* dx;                     // like x, or null: not wanted
  void* dweight;                // (C, kh, kw) contiguous, or null: not wanted
};

// C++ CPU kernel (float32 and float64 storage).
void depthwise_conv_bwd_cpu(const DepthwiseConvParams& p);

}  // namespace fastdarts
