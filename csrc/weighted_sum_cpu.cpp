// C++ CPU twin of the weighted-sum kernels (float32 and float64), reading the same
// WeightedSumParams as the CUDA launchers. Torch-free; parallel with OpenMP when built
// with it. The dw reduction uses fixed chunks summed in order, so results do not depend
// on the thread count.
#include <cstddef>
#include <vector>

#include "weighted_sum.h"

namespace fastdarts {
namespace {

constexpr int64_t kChunk = 1 << 14;

template <typename T, typename Acc>
void fwd(const WeightedSumParams& p) {
  const T* y = static_cast<const T*>(p.y);
  const Acc* w = static_cast<const Acc*>(p.w);
  T* out = static_cast<T*>(p.out);
  const int64_t K = p.K, M = p.M;
#pragma omp parallel for schedule(static)
  for (int64_t m = 0; m < M; ++m) {
    Acc acc = 0;
    for (int64_t k = 0; k < K; ++k) acc += w[k] * static_cast<Acc>(y[k * M + m]);
    out[m] = static_cast<T>(acc);
  }
}

template <typename T, typename Acc>
void bwd(const WeightedSumParams& p) {
  const T* y = static_cast<const T*>(p.y);
  const Acc* w = static_cast<const Acc*>(p.w);
  const T* g = static_cast<const T*>(p.g);
  T* dy = static_cast<T*>(p.dy);
  Acc* dw = static_cast<Acc*>(p.dw);
  const int64_t K = p.K, M = p.M;
  const int64_t chunks = (M + kChunk - 1) / kChunk;
  std::vector<Acc> partials(static_cast<std::size_t>(K * (chunks > 0 ? chunks : 1)), Acc(0));
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t begin = c * kChunk;
      const int64_t end = begin + kChunk < M ? begin + kChunk : M;
      Acc acc = 0;
      const Acc wk = w[k];
      for (int64_t m = begin; m < end; ++m) {
        const Acc gm = static_cast<Acc>(g[m]);
        acc += gm * static_cast<Acc>(y[k * M + m]);
        if (dy != nullptr) dy[k * M + m] = static_cast<T>(wk * gm);
      }
      partials[static_cast<std::size_t>(k * chunks + c)] = acc;
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    Acc acc = 0;
    for (int64_t c = 0; c < chunks; ++c) acc += partials[static_cast<std::size_t>(k * chunks + c)];
    dw[k] = acc;
  }
}

}  // namespace

void weighted_sum_fwd_cpu(const WeightedSumParams& p) {
  if (p.dtype == DType::kFloat64) fwd<double, double>(p);
  else fwd<float, float>(p);
}

void weighted_sum_bwd_cpu(const WeightedSumParams& p) {
  if (p.dtype == DType::kFloat64) bwd<double, double>(p);
  else bwd<float, float>(p);
}

}  // namespace fastdarts
