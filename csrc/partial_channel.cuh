// CUDA launchers of the partial-channel combine (formulas in partial_channel.h). No torch
// headers: errors come back as cudaError_t for the binding to report.
#pragma once
#include <cuda_runtime.h>

#include "partial_channel.h"

namespace fastdarts {

constexpr int kPcThreads = 256;

// Blocks of the backward (one dbeta partial each) for `elements` gradient elements.
int64_t partial_combine_bwd_blocks(int64_t elements);

cudaError_t launch_partial_combine_fwd(const PartialChannelParams& p, cudaStream_t stream);
cudaError_t launch_partial_combine_bwd(const PartialChannelParams& p, cudaStream_t stream);

}  // namespace fastdarts
