// CUDA launchers of the finite-difference HVP kernels (formulas in hvp.h). No torch headers:
// errors come back as cudaError_t for the binding to report.
#pragma once
#include <cuda_runtime.h>

#include "hvp.h"

namespace fastdarts {

constexpr int kHvpThreads = 256;

// Blocks of the squared-norm reduction for n elements; the caller allocates that many
// floats of workspace (p.partials, p.num_blocks).
int64_t hvp_sq_norm_blocks(int64_t n);

cudaError_t launch_hvp_virtual_step(const HvpParams& p, cudaStream_t stream);
cudaError_t launch_hvp_sq_norm(const HvpParams& p, cudaStream_t stream);
cudaError_t launch_hvp_perturb(const HvpParams& p, cudaStream_t stream);
cudaError_t launch_hvp_combine(const HvpParams& p, cudaStream_t stream);

}  // namespace fastdarts
