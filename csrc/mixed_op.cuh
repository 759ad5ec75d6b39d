// CUDA launchers of the fused mixed-op kernels (formulas in mixed_op.h). No torch headers:
// errors come back as cudaError_t for the binding to report.
#pragma once
#include <cuda_runtime.h>

#include "mixed_op.h"

namespace fastdarts {

constexpr int kBnThreads = 256;

// Row chunks of the reductions for N*S rows; the caller allocates
// 3 * bn_num_chunks(N * S) * C floats of workspace (p.partials) and sets p.num_chunks.
int64_t bn_num_chunks(int64_t rows);

cudaError_t launch_bn_stats(const BnTailParams& p, cudaStream_t stream);
cudaError_t launch_bn_accumulate(const BnTailParams& p, cudaStream_t stream);
cudaError_t launch_bn_grad_reduce(const BnTailParams& p, cudaStream_t stream);
cudaError_t launch_bn_grad_input(const BnTailParams& p, cudaStream_t stream);

}  // namespace fastdarts
