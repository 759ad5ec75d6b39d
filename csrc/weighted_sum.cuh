// CUDA launchers of the weighted-sum kernels (see weighted_sum.h for the formulas).
// No torch headers: errors come back as cudaError_t for the binding to report.
#pragma once
#include <cuda_runtime.h>

#include "weighted_sum.h"

namespace fastdarts {

constexpr int kWeightedSumThreads = 256;

// Blocks the backward reduction uses for M elements; the caller allocates
// K * weighted_sum_bwd_blocks(M) floats of workspace.
int64_t weighted_sum_bwd_blocks(int64_t M);

cudaError_t launch_weighted_sum_fwd(const WeightedSumParams& p, cudaStream_t stream);
cudaError_t launch_weighted_sum_bwd(const WeightedSumParams& p, cudaStream_t stream);

}  // namespace fastdarts
