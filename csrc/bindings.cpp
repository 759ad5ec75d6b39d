// The only torch-aware C++ file: checks tensors (naming the argument, what was expected and
// what was received), fills the torch-free parameter blocks and calls the CPU kernels or
// the CUDA launchers.
#include <torch/extension.h>

#include <sstream>
#include <stdexcept>
#include <string>

#include "weighted_sum.h"
#ifdef FASTDARTS_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "weighted_sum.cuh"
#endif

namespace fastdarts {
namespace {

// Bad arguments throw std::invalid_argument, which pybind11 turns into ValueError, the
// same type the Python layer raises. Open problem: in the CUDA build on the lent H100
// (torch 2.11) a throw from check_weighted_sum_inputs kills the process, with this
// exception type as with c10::Error; the throw from to_dtype does not.
template <typename... Args>
[[noreturn]] void throw_bad_argument(const char* fn, const char* name, const Args&... parts) {
  std::ostringstream message;
  message << fn << ": argument '" << name << "' ";
  (message << ... << parts);
  throw std::invalid_argument(message.str());
}

#define FD_CHECK_ARG(cond, fn, name, ...) \
  do {                                     \
    if (!(cond)) throw_bad_argument(fn, name, __VA_ARGS__); \
  } while (0)

std::string shape_str(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (d) s += ", ";
    s += std::to_string(t.size(d));
  }
  return s + "]";
}

DType to_dtype(const at::Tensor& t, const char* fn, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kDouble: return DType::kFloat64;
    default:
      throw_bad_argument(fn, name, "must be float32, float16, bfloat16 or float64; got ",
                         c10::toString(t.scalar_type()));
  }
}

// y (K, M) contiguous, w (K,) contiguous in the accumulation dtype, same device.
void check_weighted_sum_inputs(const char* fn, const at::Tensor& y, const at::Tensor& w) {
  FD_CHECK_ARG(y.dim() == 2, fn, "y", "must be 2-D (K, M); got shape ", shape_str(y));
  FD_CHECK_ARG(y.is_contiguous(), fn, "y", "must be contiguous");
  FD_CHECK_ARG(w.dim() == 1 && w.size(0) == y.size(0), fn, "w", "must have shape (",
               y.size(0), ",); got ", shape_str(w));
  FD_CHECK_ARG(w.is_contiguous(), fn, "w", "must be contiguous");
  FD_CHECK_ARG(w.device() == y.device(), fn, "w", "must be on ", y.device().str(), "; got ",
               w.device().str());
  const auto acc = y.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  FD_CHECK_ARG(w.scalar_type() == acc, fn, "w", "must be ", c10::toString(acc),
               " for y of dtype ", c10::toString(y.scalar_type()), "; got ",
               c10::toString(w.scalar_type()));
}

WeightedSumParams make_params(const at::Tensor& y, const at::Tensor& w, const char* fn) {
  WeightedSumParams p{};
  p.dtype = to_dtype(y, fn, "y");
  p.K = y.size(0);
  p.M = y.size(1);
  p.y = y.data_ptr();
  p.w = w.data_ptr();
  return p;
}

at::Tensor weighted_sum_fwd(const at::Tensor& y, const at::Tensor& w) {
  const char* fn = "weighted_sum_fwd";
  check_weighted_sum_inputs(fn, y, w);
  at::Tensor out = at::empty({y.size(1)}, y.options());
  WeightedSumParams p = make_params(y, w, fn);
  p.out = out.data_ptr();
  if (y.is_cuda()) {
#ifdef FASTDARTS_WITH_CUDA
    FD_CHECK_ARG(p.dtype != DType::kFloat64, fn, "y", "float64 is not supported on CUDA");
    const c10::cuda::CUDAGuard guard(y.device());
    const cudaError_t err = launch_weighted_sum_fwd(p, c10::cuda::getCurrentCUDAStream());
    TORCH_CHECK(err == cudaSuccess, fn, ": ", cudaGetErrorString(err));
#else
    TORCH_CHECK(false, fn, ": fastdarts._C was built without CUDA");
#endif
  } else {
    FD_CHECK_ARG(p.dtype == DType::kFloat32 || p.dtype == DType::kFloat64, fn, "y",
                 "must be float32 or float64 on the CPU; got ",
                 c10::toString(y.scalar_type()));
    weighted_sum_fwd_cpu(p);
  }
  return out;
}

std::vector<at::Tensor> weighted_sum_bwd(const at::Tensor& y, const at::Tensor& w,
                                         const at::Tensor& g, bool need_dy) {
  const char* fn = "weighted_sum_bwd";
  check_weighted_sum_inputs(fn, y, w);
  FD_CHECK_ARG(g.dim() == 1 && g.size(0) == y.size(1), fn, "g", "must have shape (",
               y.size(1), ",); got ", shape_str(g));
  FD_CHECK_ARG(g.is_contiguous(), fn, "g", "must be contiguous");
  FD_CHECK_ARG(g.scalar_type() == y.scalar_type(), fn, "g", "must have y's dtype ",
               c10::toString(y.scalar_type()), "; got ", c10::toString(g.scalar_type()));
  FD_CHECK_ARG(g.device() == y.device(), fn, "g", "must be on ", y.device().str(), "; got ",
               g.device().str());
  at::Tensor dy = need_dy ? at::empty_like(y) : at::Tensor();
  at::Tensor dw = at::empty_like(w);
  WeightedSumParams p = make_params(y, w, fn);
  p.g = g.data_ptr();
  p.dy = need_dy ? dy.data_ptr() : nullptr;
  p.dw = dw.data_ptr();
  if (y.is_cuda()) {
#ifdef FASTDARTS_WITH_CUDA
    FD_CHECK_ARG(p.dtype != DType::kFloat64, fn, "y", "float64 is not supported on CUDA");
    const c10::cuda::CUDAGuard guard(y.device());
    p.num_blocks = weighted_sum_bwd_blocks(p.M);
    at::Tensor partials = at::empty({p.K, p.num_blocks}, w.options());
    p.partials = partials.data_ptr();
    const cudaError_t err = launch_weighted_sum_bwd(p, c10::cuda::getCurrentCUDAStream());
    TORCH_CHECK(err == cudaSuccess, fn, ": ", cudaGetErrorString(err));
#else
    TORCH_CHECK(false, fn, ": fastdarts._C was built without CUDA");
#endif
  } else {
    FD_CHECK_ARG(p.dtype == DType::kFloat32 || p.dtype == DType::kFloat64, fn, "y",
                 "must be float32 or float64 on the CPU; got ",
                 c10::toString(y.scalar_type()));
    weighted_sum_bwd_cpu(p);
  }
  return {dy, dw};
}

bool with_cuda() {
#ifdef FASTDARTS_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace
}  // namespace fastdarts

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastdarts C++ CPU and CUDA kernels";
  m.def("weighted_sum_fwd", &fastdarts::weighted_sum_fwd, "out = sum_k w[k] * y[k]",
        py::arg("y"), py::arg("w"));
  m.def("weighted_sum_bwd", &fastdarts::weighted_sum_bwd,
        "(dy, dw) of weighted_sum given the upstream gradient g", py::arg("y"), py::arg("w"),
        py::arg("g"), py::arg("need_dy"));
  m.def("with_cuda", &fastdarts::with_cuda, "whether the CUDA kernels were compiled in");
}
