// Torch-free parameter block shared by the CUDA and C++ CPU kernels of the finite-difference
// Hessian-vector product of second-order DARTS (DESIGN.md §5). Every tensor is a flat,
// contiguous buffer of n elements in the storage dtype; scalars are host doubles except the
// squared norm of v, which stays on the device (no host synchronisation).
//
//   virtual step: out = w - lr * (momentum * m + g + weight_decay * w)      (m may be null: 0)
//   sq_norm:      sq  = sum v^2                      (one value in the accumulation dtype)
//   perturb:      out = w + sign * eps * v,          eps = r / sqrt(sq)   (eps = r when sq = 0)
//   combine:      out = g_val + scale * (g_plus - g_minus) / (2 * eps)  (g_val may be null: 0)
//
// Arithmetic is in float (double for double storage). The squared norm is reduced in fixed
// blocks merged in block order: bitwise repeatable. A zero norm means v = 0, whose product
// is exactly 0: then w+ = w- = w and the difference quotient is 0 / (2r) = 0.
#pragma once
#include <cstdint>

#include "weighted_sum.h"  // DType

namespace fastdarts {

struct HvpParams {
  DType dtype;               // storage dtype of every buffer
  int64_t n = 0;             // elements per buffer; int64 (supernets pass 2^31 only in
                             // multi-GPU flat buffers, but offsets stay 64-bit anyway)
  const void* w = nullptr;   // virtual step, perturb: weights (the saved copy for perturb)
  const void* g = nullptr;   // virtual step: training gradient
  const void* m = nullptr;   // virtual step: momentum buffer, null before the first step
  const void* v = nullptr;   // sq_norm, perturb: the vector
  const void* g_val = nullptr;    // combine: the validation alpha gradient, null for 0
  const void* g_plus = nullptr;   // combine: alpha gradient at w + eps v
  const void* g_minus = nullptr;  // combine: alpha gradient at w - eps v
  const void* sq = nullptr;  // perturb, combine: squared norm of v (1 value, acc dtype)
  void* out = nullptr;       // virtual step, perturb, combine; may alias an input
  void* sq_out = nullptr;    // sq_norm: result (1 value, acc dtype)
  void* partials = nullptr;  // sq_norm workspace: num_blocks values of the acc dtype
  int64_t num_blocks = 0;
  double lr = 0, momentum = 0, weight_decay = 0;  // virtual step
  double r = 0, sign = 1, scale = 1;              // perturb (r, sign), combine (r, scale)
};

// C++ CPU kernels (float32 and float64).
void hvp_virtual_step_cpu(const HvpParams& p);
void hvp_sq_norm_cpu(const HvpParams& p);
void hvp_perturb_cpu(const HvpParams& p);
void hvp_combine_cpu(const HvpParams& p);

}  // namespace fastdarts
