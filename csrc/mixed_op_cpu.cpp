// C++ CPU twin of the fused mixed-op kernels (formulas in mixed_op.h). Float32 and float64
// storage; reductions accumulate in double with a fixed summation order (per channel in
// NCHW, fixed row chunks in NHWC), so results do not depend on the OpenMP thread count.
#include <cmath>
#include <cstddef>
#include <vector>

#include "mixed_op.h"

namespace fastdarts {
namespace {

constexpr int64_t kRowChunk = 256;  // NHWC reductions: rows per partial

template <typename A>
A load_or(const void* p, int64_t c, A fallback) {
  return p == nullptr ? fallback : static_cast<const A*>(p)[c];
}

// Per-channel sums over (N, S) of f(value, channel) for one or two tensors, in double.
// NCHW: one channel per task, samples in order. NHWC: fixed row chunks, merged in order.
template <typename T, typename F>
void channel_sums(const BnTailParams& p, const T* a, const T* b, F f, double* out0,
                  double* out1) {
  const int64_t N = p.N, C = p.C, S = p.S;
  if (!p.channels_last) {
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
      double s0 = 0, s1 = 0;
      for (int64_t n = 0; n < N; ++n) {
        const int64_t base = (n * C + c) * S;
        for (int64_t s = 0; s < S; ++s) {
          double v0, v1;
          f(a[base + s], b == nullptr ? T(0) : b[base + s], c, v0, v1);
          s0 += v0;
          s1 += v1;
        }
      }
      out0[c] = s0;
      out1[c] = s1;
    }
    return;
  }
  const int64_t R = N * S;
  const int64_t chunks = (R + kRowChunk - 1) / kRowChunk;
  std::vector<double> part(static_cast<std::size_t>(2 * chunks * C), 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t q = 0; q < chunks; ++q) {
    double* p0 = part.data() + 2 * q * C;
    double* p1 = p0 + C;
    const int64_t end = (q + 1) * kRowChunk < R ? (q + 1) * kRowChunk : R;
    for (int64_t r = q * kRowChunk; r < end; ++r) {
      for (int64_t c = 0; c < C; ++c) {
        double v0, v1;
        f(a[r * C + c], b == nullptr ? T(0) : b[r * C + c], c, v0, v1);
        p0[c] += v0;
        p1[c] += v1;
      }
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    double s0 = 0, s1 = 0;
    for (int64_t q = 0; q < chunks; ++q) {
      s0 += part[static_cast<std::size_t>(2 * q * C + c)];
      s1 += part[static_cast<std::size_t>((2 * q + 1) * C + c)];
    }
    out0[c] = s0;
    out1[c] = s1;
  }
}

// dst[i] = f(src0[i], src1[i], channel of i), element by element.
template <typename T, typename D, typename F>
void channel_map(const BnTailParams& p, const T* a, const T* b, D* dst, F f) {
  const int64_t N = p.N, C = p.C, S = p.S;
  if (!p.channels_last) {
#pragma omp parallel for schedule(static)
    for (int64_t plane = 0; plane < N * C; ++plane) {
      const int64_t c = plane % C, base = plane * S;
      for (int64_t s = 0; s < S; ++s)
        dst[base + s] = f(a[base + s], b == nullptr ? T(0) : b[base + s], dst[base + s], c);
    }
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < N * S; ++r) {
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = r * C + c;
      dst[i] = f(a[i], b == nullptr ? T(0) : b[i], dst[i], c);
    }
  }
}

template <typename T>
void stats(const BnTailParams& p) {
  using A = T;  // float stats for float storage, double for double
  const T* z = static_cast<const T*>(p.z);
  const int64_t C = p.C;
  const double count = static_cast<double>(p.N * p.S);
  std::vector<double> sum(C), unused(C), mean(C), m2(C);
  channel_sums<T>(p, z, nullptr,
                  [](T v, T, int64_t, double& o0, double& o1) { o0 = v; o1 = 0; },
                  sum.data(), unused.data());
  for (int64_t c = 0; c < C; ++c) mean[c] = sum[c] / count;
  // Second pass around the exact mean: no cancellation.
  channel_sums<T>(p, z, nullptr,
                  [&mean](T v, T, int64_t c, double& o0, double& o1) {
                    const double d = static_cast<double>(v) - mean[c];
                    o0 = d * d;
                    o1 = 0;
                  },
                  m2.data(), unused.data());
  A* out_mean = static_cast<A*>(p.out0);
  A* out_var = static_cast<A*>(p.out1);
  A* out_rstd = static_cast<A*>(p.out2);
  for (int64_t c = 0; c < C; ++c) {
    const double var = m2[c] / count;
    out_mean[c] = static_cast<A>(mean[c]);
    out_var[c] = static_cast<A>(var);
    out_rstd[c] = static_cast<A>(1.0 / std::sqrt(var + p.eps));
  }
}

template <typename T>
void accumulate(const BnTailParams& p) {
  using A = T;
  const T* z = static_cast<const T*>(p.z);
  A* acc = static_cast<A*>(p.acc);
  const A wk = static_cast<const A*>(p.w)[p.k];
  const int64_t C = p.C;
  std::vector<A> mean(C), scale(C), shift(C);
  for (int64_t c = 0; c < C; ++c) {
    const A gamma = load_or<A>(p.gamma, c, A(1));
    mean[c] = load_or<A>(p.mean, c, A(0));
    scale[c] = wk * gamma * load_or<A>(p.rstd, c, A(1));
    shift[c] = wk * load_or<A>(p.beta, c, A(0));
  }
  const bool init = p.init;
  channel_map<T, A>(p, z, nullptr, acc, [&](T v, T, A old, int64_t c) {
    const A val = (static_cast<A>(v) - mean[c]) * scale[c] + shift[c];
    return init ? val : old + val;
  });
}

template <typename T>
void grad_reduce(const BnTailParams& p) {
  using A = T;
  const T* g = static_cast<const T*>(p.g);
  const T* z = static_cast<const T*>(p.z);
  const int64_t C = p.C;
  std::vector<double> mean(C), rstd(C), sg(C), sgx(C);
  for (int64_t c = 0; c < C; ++c) {
    mean[c] = load_or<A>(p.mean, c, A(0));
    rstd[c] = load_or<A>(p.rstd, c, A(1));
  }
  channel_sums<T>(p, g, z,
                  [&](T gv, T zv, int64_t c, double& o0, double& o1) {
                    const double gd = static_cast<double>(gv);
                    o0 = gd;
                    o1 = gd * (static_cast<double>(zv) - mean[c]) * rstd[c];
                  },
                  sg.data(), sgx.data());
  A* out_sg = static_cast<A*>(p.out0);
  A* out_sgx = static_cast<A*>(p.out1);
  for (int64_t c = 0; c < C; ++c) {
    out_sg[c] = static_cast<A>(sg[c]);
    out_sgx[c] = static_cast<A>(sgx[c]);
  }
}

template <typename T>
void grad_input(const BnTailParams& p) {
  using A = T;
  const T* g = static_cast<const T*>(p.g);
  const T* z = static_cast<const T*>(p.z);
  T* dz = static_cast<T*>(p.dz);
  const A wk = static_cast<const A*>(p.w)[p.k];
  const int64_t C = p.C;
  const A inv_count = A(1) / static_cast<A>(p.N * p.S);
  const bool centre = p.batch_stats && p.mean != nullptr;
  std::vector<A> mean(C), a(C), b(C), d(C);
  for (int64_t c = 0; c < C; ++c) {
    const A rstd = load_or<A>(p.rstd, c, A(1));
    a[c] = wk * load_or<A>(p.gamma, c, A(1)) * rstd;
    mean[c] = load_or<A>(p.mean, c, A(0));
    b[c] = centre ? a[c] * static_cast<const A*>(p.sum_g)[c] * inv_count : A(0);
    d[c] = centre ? a[c] * rstd * static_cast<const A*>(p.sum_gx)[c] * inv_count : A(0);
  }
  channel_map<T, T>(p, g, z, dz, [&](T gv, T zv, T, int64_t c) {
    return static_cast<T>(a[c] * static_cast<A>(gv) - b[c] -
                          (static_cast<A>(zv) - mean[c]) * d[c]);
  });
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
