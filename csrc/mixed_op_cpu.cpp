// C++ CPU twin of the fused mixed-op kernels (formulas in mixed_op.h). Float32 and float64
// storage.
//
// Reductions work on fixed blocks (NCHW: pieces of at most kPiece elements of one (n, c)
// plane; NHWC: kRows rows of all channels). Inside a block they accumulate in the storage
// dtype with independent lanes, so the compiler vectorises them; blocks are merged in double
// in a fixed order (statistics with Chan's formula). The result depends on the shape only,
// never on the OpenMP thread count: bitwise repeatable. The elementwise passes are plain
// per-channel affine maps over restrict pointers, which vectorise as well.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

#include "mixed_op.h"

namespace fastdarts {
namespace {

constexpr int64_t kPiece = 1024;  // NCHW: elements of a plane per block
constexpr int64_t kRows = 64;     // NHWC: rows (all channels) per block
constexpr int kLanes = 8;         // NCHW: independent accumulators inside a block

template <typename A>
A load_or(const void* p, int64_t c, A fallback) {
  return p == nullptr ? fallback : static_cast<const A*>(p)[c];
}

// Per-block partial moments: count, mean and sum of squared deviations from that mean.
struct Moments {
  double n = 0, mean = 0, m2 = 0;
  void merge(double nb, double mb, double m2b) {  // Chan et al.
    const double tot = n + nb;
    const double delta = mb - mean;
    mean += delta * nb / tot;
    m2 += m2b + delta * delta * n * nb / tot;
    n = tot;
  }
};

// ---- NCHW blocks: contiguous runs of one channel --------------------------------------

template <typename T>
T lane_sum(const T* __restrict__ a, int64_t len) {
  T acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += a[i + l];
  T s = 0;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  for (; i < len; ++i) s += a[i];
  return s;
}

template <typename T>
T lane_sq_dev(const T* __restrict__ a, int64_t len, T m) {
  T acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const T d = a[i + l] - m;
      acc[l] += d * d;
    }
  T s = 0;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  for (; i < len; ++i) s += (a[i] - m) * (a[i] - m);
  return s;
}

// sum g and sum g * (z - m) over a run.
template <typename T>
void lane_grad_sums(const T* __restrict__ g, const T* __restrict__ z, int64_t len, T m,
                    T& sg, T& sgx) {
  T a0[kLanes] = {}, a1[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      a0[l] += g[i + l];
      a1[l] += g[i + l] * (z[i + l] - m);
    }
  sg = 0;
  sgx = 0;
  for (int l = 0; l < kLanes; ++l) {
    sg += a0[l];
    sgx += a1[l];
  }
  for (; i < len; ++i) {
    sg += g[i];
    sgx += g[i] * (z[i] - m);
  }
}

// ---- NHWC blocks: kRows rows of all channels -------------------------------------------

// Two per-channel partials per row block: `block(r0, r1, s0, s1)` adds block [r0, r1) into the
// zeroed storage-dtype arrays s0, s1 (C each). Returns them in double, block after block:
// part[2*q*C + c] and part[(2*q+1)*C + c].
template <typename T, typename F>
std::vector<double> nhwc_block_partials(const BnTailParams& p, F block) {
  const int64_t C = p.C, R = p.N * p.S, blocks = (R + kRows - 1) / kRows;
  std::vector<double> part(static_cast<std::size_t>(2 * blocks * C));
#pragma omp parallel
  {
    std::vector<T> b0(C), b1(C);
#pragma omp for schedule(static)
    for (int64_t q = 0; q < blocks; ++q) {
      std::fill(b0.begin(), b0.end(), T(0));
      std::fill(b1.begin(), b1.end(), T(0));
      block(q * kRows, std::min(R, (q + 1) * kRows), b0.data(), b1.data());
      double* out = part.data() + 2 * q * C;
      for (int64_t c = 0; c < C; ++c) {
        out[c] = b0[c];
        out[C + c] = b1[c];
      }
    }
  }
  return part;
}

// ---- kernels ------------------------------------------------------------------------------

template <typename T>
void write_stats(const BnTailParams& p, const std::vector<Moments>& mom) {
  T* out_mean = static_cast<T*>(p.out0);
  T* out_var = static_cast<T*>(p.out1);
  T* out_rstd = static_cast<T*>(p.out2);
  T* run_mean = static_cast<T*>(p.running_mean);
  T* run_var = static_cast<T*>(p.running_var);
  const double count = static_cast<double>(p.N * p.S);
  const double unbias = count / std::max(count - 1.0, 1.0), m = p.momentum;
  for (int64_t c = 0; c < p.C; ++c) {
    const double var = mom[c].n > 0 ? mom[c].m2 / mom[c].n : 0.0;
    out_mean[c] = static_cast<T>(mom[c].mean);
    out_var[c] = static_cast<T>(var);
    out_rstd[c] = static_cast<T>(1.0 / std::sqrt(var + p.eps));
    if (run_mean != nullptr) {
      run_mean[c] = static_cast<T>((1.0 - m) * run_mean[c] + m * mom[c].mean);
      run_var[c] = static_cast<T>((1.0 - m) * run_var[c] + m * var * unbias);
    }
  }
  if (p.num_batches_tracked != nullptr) ++*p.num_batches_tracked;
}

template <typename T>
void stats(const BnTailParams& p) {
  const T* z = static_cast<const T*>(p.z);
  const int64_t N = p.N, C = p.C, S = p.S;
  std::vector<Moments> mom(static_cast<std::size_t>(C));
  if (!p.channels_last) {
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
      Moments m;
      for (int64_t n = 0; n < N; ++n) {
        const T* plane = z + (n * C + c) * S;
        for (int64_t s0 = 0; s0 < S; s0 += kPiece) {
          const int64_t len = std::min(kPiece, S - s0);
          const T mean = lane_sum(plane + s0, len) / static_cast<T>(len);
          const T m2 = lane_sq_dev(plane + s0, len, mean);
          if (m.n == 0) m = {static_cast<double>(len), double(mean), double(m2)};
          else m.merge(static_cast<double>(len), mean, m2);
        }
      }
      mom[c] = m;
    }
    write_stats<T>(p, mom);
    return;
  }
  const int64_t R = N * S, blocks = (R + kRows - 1) / kRows;
  // Per block: its mean (first pass) and the squared deviations from it (second pass, in
  // cache).
  const std::vector<double> part = nhwc_block_partials<T>(
      p, [&](int64_t r0, int64_t r1, T* __restrict__ s, T* __restrict__ d2) {
        for (int64_t r = r0; r < r1; ++r) {
          const T* __restrict__ row = z + r * C;
          for (int64_t c = 0; c < C; ++c) s[c] += row[c];
        }
        const T inv = T(1) / static_cast<T>(r1 - r0);
        for (int64_t c = 0; c < C; ++c) s[c] *= inv;
        for (int64_t r = r0; r < r1; ++r) {
          const T* __restrict__ row = z + r * C;
          for (int64_t c = 0; c < C; ++c) {
            const T d = row[c] - s[c];
            d2[c] += d * d;
          }
        }
      });
  for (int64_t q = 0; q < blocks; ++q) {
    const double nb = static_cast<double>(std::min(R, (q + 1) * kRows) - q * kRows);
    const double* in = part.data() + 2 * q * C;
    for (int64_t c = 0; c < C; ++c) {
      if (q == 0) mom[c] = {nb, in[c], in[C + c]};
      else mom[c].merge(nb, in[c], in[C + c]);
    }
  }
  write_stats<T>(p, mom);
}

// dst (=|+=) (src - centre_c) * scale_c + shift_c per channel; `keep` adds to the old dst.
// Centring first keeps the precision when the mean is large against the spread.
template <typename T, typename D>
void affine_map(const BnTailParams& p, const T* __restrict__ src, D* __restrict__ dst,
                const std::vector<D>& centre, const std::vector<D>& scale,
                const std::vector<D>& shift, bool keep) {
  const int64_t N = p.N, C = p.C, S = p.S;
  if (!p.channels_last) {
#pragma omp parallel for schedule(static)
    for (int64_t plane = 0; plane < N * C; ++plane) {
      const int64_t c = plane % C;
      const D m = centre[c], a = scale[c], b = shift[c];
      const T* __restrict__ x = src + plane * S;
      D* __restrict__ y = dst + plane * S;
      if (keep)
        for (int64_t s = 0; s < S; ++s) y[s] += (static_cast<D>(x[s]) - m) * a + b;
      else
        for (int64_t s = 0; s < S; ++s) y[s] = (static_cast<D>(x[s]) - m) * a + b;
    }
    return;
  }
  const D* __restrict__ m = centre.data();
  const D* __restrict__ a = scale.data();
  const D* __restrict__ b = shift.data();
  const int64_t R = N * S;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < R; ++r) {
    const T* __restrict__ x = src + r * C;
    D* __restrict__ y = dst + r * C;
    if (keep)
      for (int64_t c = 0; c < C; ++c) y[c] += (static_cast<D>(x[c]) - m[c]) * a[c] + b[c];
    else
      for (int64_t c = 0; c < C; ++c) y[c] = (static_cast<D>(x[c]) - m[c]) * a[c] + b[c];
  }
}

template <typename T>
void accumulate(const BnTailParams& p) {
  using A = T;  // accumulation dtype: float for float storage, double for double
  const A wk = static_cast<const A*>(p.w)[p.k];
  const int64_t C = p.C;
  // w_k * (gamma * (z - mean) * rstd + beta)
  std::vector<A> mean(C), scale(C), shift(C);
  for (int64_t c = 0; c < C; ++c) {
    mean[c] = load_or<A>(p.mean, c, A(0));
    scale[c] = wk * load_or<A>(p.gamma, c, A(1)) * load_or<A>(p.rstd, c, A(1));
    shift[c] = wk * load_or<A>(p.beta, c, A(0));
  }
  affine_map<T, A>(p, static_cast<const T*>(p.z), static_cast<A*>(p.acc), mean, scale, shift,
                   !p.init);
}

template <typename T>
void grad_reduce(const BnTailParams& p) {
  const T* g = static_cast<const T*>(p.g);
  const T* z = static_cast<const T*>(p.z);
  const int64_t N = p.N, C = p.C, S = p.S;
  std::vector<T> mean(C);
  std::vector<double> rstd(C), sg(C, 0.0), sgx(C, 0.0);
  for (int64_t c = 0; c < C; ++c) {
    mean[c] = load_or<T>(p.mean, c, T(0));
    rstd[c] = load_or<T>(p.rstd, c, T(1));
  }
  if (!p.channels_last) {
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
      double s0 = 0, s1 = 0;
      for (int64_t n = 0; n < N; ++n) {
        const int64_t base = (n * C + c) * S;
        for (int64_t s = 0; s < S; s += kPiece) {
          T a = 0, b = 0;
          lane_grad_sums(g + base + s, z + base + s, std::min(kPiece, S - s), mean[c], a, b);
          s0 += a;
          s1 += b;
        }
      }
      sg[c] = s0;
      sgx[c] = s1;
    }
  } else {
    const int64_t blocks = (N * S + kRows - 1) / kRows;
    const T* __restrict__ m = mean.data();
    const std::vector<double> part = nhwc_block_partials<T>(
        p, [&](int64_t r0, int64_t r1, T* __restrict__ s0, T* __restrict__ s1) {
          for (int64_t r = r0; r < r1; ++r) {
            const T* __restrict__ gr = g + r * C;
            const T* __restrict__ zr = z + r * C;
            for (int64_t c = 0; c < C; ++c) {
              s0[c] += gr[c];
              s1[c] += gr[c] * (zr[c] - m[c]);
            }
          }
        });
    for (int64_t q = 0; q < blocks; ++q)
      for (int64_t c = 0; c < C; ++c) {
        sg[c] += part[static_cast<std::size_t>(2 * q * C + c)];
        sgx[c] += part[static_cast<std::size_t>((2 * q + 1) * C + c)];
      }
  }
  T* out_sg = static_cast<T*>(p.out0);
  T* out_sgx = static_cast<T*>(p.out1);
  double dw = 0;  // mixing-weight gradient, summed over channels in order
  for (int64_t c = 0; c < C; ++c) {
    out_sg[c] = static_cast<T>(sg[c]);
    out_sgx[c] = static_cast<T>(sgx[c] * rstd[c]);  // sum g * xhat
    dw += static_cast<double>(load_or<T>(p.gamma, c, T(1))) * out_sgx[c];
    if (p.beta != nullptr) dw += static_cast<double>(static_cast<const T*>(p.beta)[c]) * out_sg[c];
  }
  if (p.dw != nullptr) static_cast<T*>(p.dw)[p.k] = static_cast<T>(dw);
}

template <typename T>
void grad_input(const BnTailParams& p) {
  using A = T;
  const T* g = static_cast<const T*>(p.g);
  const T* z = static_cast<const T*>(p.z);
  T* dz = static_cast<T*>(p.dz);
  const A wk = static_cast<const A*>(p.w)[p.k];
  const int64_t N = p.N, C = p.C, S = p.S;
  const A inv_count = A(1) / static_cast<A>(N * S);
  const bool centre = p.batch_stats && p.mean != nullptr;
  // dz = a*g - b - (z - mean)*d
  std::vector<A> a(C), b(C), d(C), mean(C);
  for (int64_t c = 0; c < C; ++c) {
    const A rstd = load_or<A>(p.rstd, c, A(1));
    a[c] = wk * load_or<A>(p.gamma, c, A(1)) * rstd;
    b[c] = centre ? a[c] * static_cast<const A*>(p.sum_g)[c] * inv_count : A(0);
    d[c] = centre ? a[c] * rstd * static_cast<const A*>(p.sum_gx)[c] * inv_count : A(0);
    mean[c] = load_or<A>(p.mean, c, A(0));
  }
  if (!p.channels_last) {
#pragma omp parallel for schedule(static)
    for (int64_t plane = 0; plane < N * C; ++plane) {
      const int64_t c = plane % C;
      const A ac = a[c], bc = b[c], dc = d[c], mc = mean[c];
      const T* __restrict__ gp = g + plane * S;
      const T* __restrict__ zp = z + plane * S;
      T* __restrict__ out = dz + plane * S;
      for (int64_t s = 0; s < S; ++s) out[s] = ac * gp[s] - bc - (zp[s] - mc) * dc;
    }
    return;
  }
  const A* __restrict__ ap = a.data();
  const A* __restrict__ bp = b.data();
  const A* __restrict__ dp = d.data();
  const A* __restrict__ mp = mean.data();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < N * S; ++r) {
    const T* __restrict__ gr = g + r * C;
    const T* __restrict__ zr = z + r * C;
    T* __restrict__ out = dz + r * C;
    for (int64_t c = 0; c < C; ++c) out[c] = ap[c] * gr[c] - bp[c] - (zr[c] - mp[c]) * dp[c];
  }
}

}  // namespace

void bn_stats_cpu(const BnTailParams& p) {
  if (p.dtype == DType::kFloat64) stats<double>(p);
  else stats<float>(p);
}

void bn_accumulate_cpu(const BnTailParams& p) {
  if (p.dtype == DType::kFloat64) accumulate<double>(p);
  else accumulate<float>(p);
}

void bn_grad_reduce_cpu(const BnTailParams& p) {
  if (p.dtype == DType::kFloat64) grad_reduce<double>(p);
  else grad_reduce<float>(p);
}

void bn_grad_input_cpu(const BnTailParams& p) {
  if (p.dtype == DType::kFloat64) grad_input<double>(p);
  else grad_input<float>(p);
}

}  // namespace fastdarts
