// CUDA launchers of the fused mixed-op kernels (formulas in mixed_op.h). No torch headers:
// errors come back as cudaError_t for the binding to report.
#pragma once
#include <cuda_runtime.h>

#include "mixed_op.h"

namespace fastdarts {

constexpr int kBnThreads = 256;

// The ops of one edge, run by one launch of each kernel: op j is blockIdx.z (reductions) or
// the j-th term of the per-element loop (accumulate, grad_input). Every op shares op[0]'s
// dtype, N, C, S and layout; accumulate reads acc, w and init from op[0] only. Passed by
// value as a kernel parameter (__grid_constant__): no device copy, so still no host sync.
constexpr int kMaxTailOps = 8;
struct BnTailBatch {
  BnTailParams op[kMaxTailOps];
  int n = 0;
  DType dtype = DType::kFloat32;  // op[0].dtype (dispatch_dtype reads it)
};
static_assert(sizeof(BnTailBatch) <= 4096, "kernel parameters are limited to 4 KiB");

// Row chunks of the reductions for N*S rows; the caller gives each op
// 2 * bn_num_chunks(N * S) * C floats of workspace (p.partials) and sets p.num_chunks.
int64_t bn_num_chunks(int64_t rows);

cudaError_t launch_bn_stats(const BnTailBatch& b, cudaStream_t stream);
cudaError_t launch_bn_accumulate(const BnTailBatch& b, cudaStream_t stream);
cudaError_t launch_bn_grad_reduce(const BnTailBatch& b, cudaStream_t stream);
cudaError_t launch_bn_grad_input(const BnTailBatch& b, cudaStream_t stream);

}  // namespace fastdarts
