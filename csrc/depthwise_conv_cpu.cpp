// C++ CPU kernel of the depthwise-convolution backward (formulas in depthwise_conv.h,
// loops in depthwise_conv_cpu_kernels.inc). Float32 and float64 storage, OpenMP across
// rows, planes or channels.
//
// The loop body is compiled three times on x86-64 with GCC: for the baseline instruction
// set, for AVX2 + FMA and for AVX-512, and the CPU picks one at run time. The compiler flags
// stay those of the baseline, so the library still loads on any x86-64 CPU.
#include <algorithm>
#include <cstddef>
#include <vector>

#include "depthwise_conv.h"

namespace fastdarts {
namespace dwconv_baseline {
#include "depthwise_conv_cpu_kernels.inc"
}  // namespace dwconv_baseline
}  // namespace fastdarts

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FASTDARTS_DWCONV_MULTI_ISA 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace fastdarts {
namespace dwconv_avx2 {
#include "depthwise_conv_cpu_kernels.inc"
}  // namespace dwconv_avx2
}  // namespace fastdarts
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
namespace fastdarts {
namespace dwconv_avx512 {
#include "depthwise_conv_cpu_kernels.inc"
}  // namespace dwconv_avx512
}  // namespace fastdarts
#pragma GCC pop_options
#endif

namespace fastdarts {

void depthwise_conv_bwd_cpu(const DepthwiseConvParams& p) {
#ifdef FASTDARTS_DWCONV_MULTI_ISA
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return dwconv_avx512::run_any(p);
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return dwconv_avx2::run_any(p);
#endif
  dwconv_baseline::run_any(p);
}

}  // namespace fastdarts
