// C++ CPU twin of the partial-channel combine (formulas in partial_channel.h). Float32 and
// float64 storage; dbeta accumulates in double over fixed blocks of the element loop, merged
// in block order: bitwise repeatable whatever the OpenMP thread count. No torch headers.
#include <algorithm>
#include <cmath>
#include <vector>

#include "partial_channel.h"

namespace fastdarts {
namespace {

struct Index {
  int64_t n, o, h, w;
};

// Element i of out/g in memory order -> (n, o, h, w).
inline Index decompose(const PartialChannelParams& p, int64_t i) {
  Index q{};
  if (p.channels_last) {
    q.o = i % p.C; i /= p.C;
    q.w = i % p.W; i /= p.W;
    q.h = i % p.H; q.n = i / p.H;
  } else {
    q.w = i % p.W; i /= p.W;
    q.h = i % p.H; i /= p.H;
    q.o = i % p.C; q.n = i / p.C;
  }
  return q;
}

inline int64_t at4(const int64_t* s, int64_t n, int64_t c, int64_t h, int64_t w) {
  return n * s[0] + c * s[1] + h * s[2] + w * s[3];
}

// Offset in x of the bypass value of (n, c, h, w): the window's first maximum on stride 2.
template <typename T>
inline int64_t bypass_offset(const PartialChannelParams& p, const T* x, int64_t n, int64_t c,
                             int64_t h, int64_t w) {
  if (p.stride == 1) return at4(p.sx, n, c, h, w);
  int64_t best = at4(p.sx, n, c, 2 * h, 2 * w);
  T best_v = x[best];
  for (int64_t a = 0; a < 2; ++a) {
    for (int64_t b = 0; b < 2; ++b) {
      if (a == 0 && b == 0) continue;
      const int64_t off = at4(p.sx, n, c, 2 * h + a, 2 * w + b);
      const T v = x[off];
      if (v > best_v || std::isnan(v)) {  // as max_pool2d: first maximum, NaN wins
        best = off;
        best_v = v;
        if (std::isnan(v)) return best;
      }
    }
  }
  return best;
}

template <typename T>
void fwd(const PartialChannelParams& p) {
  using Acc = T;  // float32 storage accumulates in float, float64 in double
  T* out = static_cast<T*>(p.out);
  const T* m = static_cast<const T*>(p.m);
  const T* x = static_cast<const T*>(p.x);
  const Acc beta = p.beta ? *static_cast<const Acc*>(p.beta) : Acc(1);
  const int64_t total = p.N * p.C * p.H * p.W;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < total; ++i) {
    const Index q = decompose(p, i);
    const int64_t c = (q.o % p.K) * p.P + q.o / p.K;
    const Acc v = c < p.P ? Acc(m[at4(p.sm, q.n, c, q.h, q.w)])
                          : beta * Acc(x[bypass_offset(p, x, q.n, c, q.h, q.w)]);
    const int64_t off = at4(p.so, q.n, q.o, q.h, q.w);
    out[off] = p.accumulate ? T(Acc(out[off]) + v) : T(v);
  }
}

template <typename T>
void bwd(const PartialChannelParams& p) {
  const T* g = static_cast<const T*>(p.g);
  const T* x = static_cast<const T*>(p.x);
  T* g_m = static_cast<T*>(p.g_m);
  T* dx = static_cast<T*>(p.dx);
  using Acc = T;
  const Acc beta = p.beta ? *static_cast<const Acc*>(p.beta) : Acc(1);
  const int64_t total = p.N * p.C * p.H * p.W;
  const int64_t block = (total + p.num_blocks - 1) / p.num_blocks;
  std::vector<double> partial(p.num_blocks, 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < p.num_blocks; ++b) {
    double sum = 0.0;
    const int64_t end = std::min(total, (b + 1) * block);
    for (int64_t i = b * block; i < end; ++i) {
      const Index q = decompose(p, i);
      const int64_t c = (q.o % p.K) * p.P + q.o / p.K;
      const T gv = g[at4(p.so, q.n, q.o, q.h, q.w)];
      if (c < p.P) {
        g_m[at4(p.sm, q.n, c, q.h, q.w)] = gv;
      } else {
        const int64_t src = bypass_offset(p, x, q.n, c, q.h, q.w);
        dx[src] = T(beta * Acc(gv));
        sum += double(gv) * double(x[src]);
      }
    }
    partial[b] = sum;
  }
  Acc* out = static_cast<Acc*>(p.dbeta_partials);
  for (int64_t b = 0; b < p.num_blocks; ++b) out[b] = Acc(partial[b]);
}

}  // namespace

void partial_combine_fwd_cpu(const PartialChannelParams& p) {
  if (p.dtype == DType::kFloat64) fwd<double>(p); else fwd<float>(p);
}

void partial_combine_bwd_cpu(const PartialChannelParams& p) {
  if (p.dtype == DType::kFloat64) bwd<double>(p); else bwd<float>(p);
}

}  // namespace fastdarts
