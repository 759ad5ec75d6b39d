// C++ CPU twin of the finite-difference HVP kernels (formulas in hvp.h). Float32 storage
// computes in float, float64 in double. The squared norm accumulates in double over fixed
// blocks merged in block order, so it is bitwise repeatable whatever the thread count.
#include <algorithm>
#include <cmath>
#include <vector>

#include "hvp.h"

namespace fastdarts {
namespace {

constexpr int64_t kBlock = 1 << 14;

// eps = r / ||v||, or r when v = 0 (see hvp.h).
template <typename T>
inline T epsilon(const HvpParams& p) {
  const T sq = *static_cast<const T*>(p.sq);
  return sq > T(0) ? static_cast<T>(p.r) / std::sqrt(sq) : static_cast<T>(p.r);
}

template <typename T>
void virtual_step(const HvpParams& p) {
  const T* __restrict__ w = static_cast<const T*>(p.w);
  const T* __restrict__ g = static_cast<const T*>(p.g);
  const T* __restrict__ m = static_cast<const T*>(p.m);
  T* out = static_cast<T*>(p.out);  // may alias w
  const T lr = static_cast<T>(p.lr), mu = static_cast<T>(p.momentum);
  const T wd = static_cast<T>(p.weight_decay);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < p.n; ++i) {
    const T d = (m != nullptr ? mu * m[i] : T(0)) + g[i] + wd * w[i];
    out[i] = w[i] - lr * d;
  }
}

template <typename T>
void sq_norm(const HvpParams& p) {
  const T* __restrict__ v = static_cast<const T*>(p.v);
  const int64_t blocks = (p.n + kBlock - 1) / kBlock;
  std::vector<double> part(static_cast<size_t>(blocks), 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t end = std::min(p.n, (b + 1) * kBlock);
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // independent lanes vectorise
    int64_t i = b * kBlock;
    for (; i + 8 <= end; i += 8)
      for (int l = 0; l < 8; ++l) acc[l] += static_cast<double>(v[i + l]) * v[i + l];
    for (; i < end; ++i) acc[0] += static_cast<double>(v[i]) * v[i];
    part[b] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  }
  double total = 0;
  for (double s : part) total += s;
  *static_cast<T*>(p.sq_out) = static_cast<T>(total);
}

template <typename T>
void perturb(const HvpParams& p) {
  const T* __restrict__ w = static_cast<const T*>(p.w);
  const T* __restrict__ v = static_cast<const T*>(p.v);
  T* out = static_cast<T*>(p.out);
  const T step = static_cast<T>(p.sign) * epsilon<T>(p);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < p.n; ++i) out[i] = w[i] + step * v[i];
}

template <typename T>
void combine(const HvpParams& p) {
  const T* __restrict__ gv = static_cast<const T*>(p.g_val);
  const T* __restrict__ gp = static_cast<const T*>(p.g_plus);
  const T* __restrict__ gm = static_cast<const T*>(p.g_minus);
  T* out = static_cast<T*>(p.out);
  // Divide by (2 eps), parenthesised: `/ 2 * eps` multiplies by eps (a bug shipped before).
  const T two_eps = T(2) * epsilon<T>(p);
  const T scale = static_cast<T>(p.scale);
  for (int64_t i = 0; i < p.n; ++i) {
    const T fd = (gp[i] - gm[i]) / two_eps;
    out[i] = (gv != nullptr ? gv[i] : T(0)) + scale * fd;
  }
}

}  // namespace

#define FD_HVP_CPU(name, fn) \
  void name(const HvpParams& p) { if (p.dtype == DType::kFloat64) fn<double>(p); else fn<float>(p); }
FD_HVP_CPU(hvp_virtual_step_cpu, virtual_step)
FD_HVP_CPU(hvp_sq_norm_cpu, sq_norm)
FD_HVP_CPU(hvp_perturb_cpu, perturb)
FD_HVP_CPU(hvp_combine_cpu, combine)
#undef FD_HVP_CPU

}  // namespace fastdarts
