// The only torch-aware C++ file: checks tensors (naming the argument, what was expected and
// what was received), fills the torch-free parameter blocks and calls the CPU kernels or
// the CUDA launchers.
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>

#include "depthwise_conv.h"
#include "hvp.h"
#include "mixed_op.h"
#include "partial_channel.h"
#include "weighted_sum.h"
#ifdef FASTDARTS_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "hvp.cuh"
#include "mixed_op.cuh"
#include "partial_channel.cuh"
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


// ---------------------------------------------------------------------------------------
// Fused mixed-op tail (mixed_op.h). Every activation is 4-D (N, C, H, W), contiguous in
// NCHW or channels_last; all activations of one call share z's layout. Per-channel vectors
// and the weights are in the accumulation dtype (float; double for double storage).

using OptTensor = c10::optional<at::Tensor>;

at::ScalarType acc_type(const at::Tensor& z) {
  return z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Runs the CPU kernel or, for a CUDA tensor `t`, the CUDA launcher on the current stream.
template <typename Params, typename Cpu, typename Cuda>
void run_kernel(const char* fn, const at::Tensor& t, const Params& p, Cpu cpu, Cuda cuda) {
  if (t.is_cuda()) {
#ifdef FASTDARTS_WITH_CUDA
    const c10::cuda::CUDAGuard guard(t.device());
    const cudaError_t err = cuda(p, c10::cuda::getCurrentCUDAStream());
    TORCH_CHECK(err == cudaSuccess, fn, ": ", cudaGetErrorString(err));
#else
    (void)cuda;
    TORCH_CHECK(false, fn, ": fastdarts._C was built without CUDA");
#endif
  } else {
    cpu(p);
  }
}

// An argument's name in errors, formed only when one is raised (these checks run for every op
// of every edge): `single` in a one-op call, `list[term]` in an edge call.
struct ArgName {
  const char* single;
  const char* list = nullptr;
  int64_t term = -1;
  ArgName(const char* name) : single(name) {}  // NOLINT(runtime/explicit): a plain name
  ArgName(const char* single_, const char* list_, int64_t term_)
      : single(single_), list(list_), term(term_) {}
  std::string str() const {
    return term < 0 ? std::string(single) : std::string(list) + "[" + std::to_string(term) + "]";
  }
};

std::ostream& operator<<(std::ostream& out, const ArgName& name) { return out << name.str(); }

// One op of a tail call. The one-op functions (bn_stats, ...) make one; the edge functions
// (bn_stats_edge, ...) one per op of their lists, all with zs[0]'s shape, layout, dtype and
// device, and their errors name the list entry (`means[2]`).
struct TailCall {
  const char* fn;
  const at::Tensor& z;
  int64_t term;  // index into the edge function's lists, or -1 for a one-op function
  bool channels_last = false;
  BnTailParams p{};

  TailCall(const char* fn_, const at::Tensor& z_, int64_t term_ = -1)
      : fn(fn_), z(z_), term(term_) {
    FD_CHECK_ARG(z.dim() == 4, fn, arg("z", "zs").str().c_str(),
                 "must be 4-D (N, C, H, W); got shape ", shape_str(z));
    if (z.is_contiguous()) {
      channels_last = false;
    } else if (z.is_contiguous(at::MemoryFormat::ChannelsLast)) {
      channels_last = true;
    } else {
      throw_bad_argument(fn, arg("z", "zs").str().c_str(),
                         "must be contiguous in NCHW or channels_last order");
    }
    const at::ScalarType st = z.scalar_type();
    const bool known = st == at::kFloat || st == at::kHalf || st == at::kBFloat16 ||
                       st == at::kDouble;
    p.dtype = to_dtype(z, fn, known ? "z" : arg("z", "zs").str().c_str());
    if (z.is_cuda()) {
      FD_CHECK_ARG(p.dtype != DType::kFloat64, fn, arg("z", "zs").str().c_str(),
                   "float64 is not supported on CUDA");
    } else {
      FD_CHECK_ARG(p.dtype == DType::kFloat32 || p.dtype == DType::kFloat64, fn,
                   arg("z", "zs").str().c_str(), "must be float32 or float64 on the CPU; got ",
                   c10::toString(z.scalar_type()));
    }
    p.N = z.size(0);
    p.C = z.size(1);
    p.S = z.size(2) * z.size(3);
    p.channels_last = channels_last;
    p.z = z.data_ptr();
  }

  ArgName arg(const char* single, const char* list) const { return {single, list, term}; }

  // Another activation: same shape, layout and device; `dtype` as given.
  const void* activation(const at::Tensor& t, const ArgName& name, at::ScalarType dtype) const {
    FD_CHECK_ARG(t.sizes() == z.sizes(), fn, name.str().c_str(), "must have ", arg("z", "zs"),
                 "'s shape ", shape_str(z), "; got ", shape_str(t));
    FD_CHECK_ARG(t.device() == z.device(), fn, name.str().c_str(), "must be on ",
                 z.device().str(), "; got ", t.device().str());
    FD_CHECK_ARG(t.scalar_type() == dtype, fn, name.str().c_str(), "must be ",
                 c10::toString(dtype), "; got ", c10::toString(t.scalar_type()));
    FD_CHECK_ARG(t.is_contiguous(channels_last ? at::MemoryFormat::ChannelsLast
                                               : at::MemoryFormat::Contiguous),
                 fn, name.str().c_str(), "must have ", arg("z", "zs"), "'s memory layout (",
                 channels_last ? "channels_last" : "NCHW", ")");
    return t.data_ptr();
  }

  // A vector of `n` values in the accumulation dtype on z's device (null when absent).
  const void* vec(const OptTensor& t, const ArgName& name, int64_t n) const {
    if (!t.has_value() || !t->defined()) return nullptr;
    FD_CHECK_ARG(t->dim() == 1 && t->size(0) == n, fn, name.str().c_str(), "must have shape (",
                 n, ",); got ", shape_str(*t));
    FD_CHECK_ARG(t->is_contiguous(), fn, name.str().c_str(), "must be contiguous");
    FD_CHECK_ARG(t->device() == z.device(), fn, name.str().c_str(), "must be on ",
                 z.device().str(), "; got ", t->device().str());
    FD_CHECK_ARG(t->scalar_type() == acc_type(z), fn, name.str().c_str(), "must be ",
                 c10::toString(acc_type(z)), "; got ", c10::toString(t->scalar_type()));
    return t->data_ptr();
  }

  // A per-channel vector of this op, named as the one-op or the edge function calls it.
  const void* channel_vec(const OptTensor& t, const char* single, const char* list) const {
    return vec(t, arg(single, list), p.C);
  }

  // The BN statistics: both given, or neither (no normalisation).
  void normalisation(const OptTensor& mean, const OptTensor& rstd) {
    p.mean = channel_vec(mean, "mean", "means");
    p.rstd = channel_vec(rstd, "rstd", "rstds");
    FD_CHECK_ARG((p.mean == nullptr) == (p.rstd == nullptr), fn,
                 arg("rstd", "rstds").str().c_str(), "must be given exactly when ",
                 arg("mean", "means"), " is");
  }

  void affine(const OptTensor& gamma, const OptTensor& beta) {
    p.gamma = channel_vec(gamma, "gamma", "gammas");
    p.beta = channel_vec(beta, "beta", "betas");
  }

  void weights(const at::Tensor& w, int64_t k) {
    p.w = vec(w, "w", w.dim() == 1 ? w.size(0) : -1);
    FD_CHECK_ARG(k >= 0 && k < w.size(0), fn, arg("k", "ks").str().c_str(),
                 "must index w (0 <= k < ", w.size(0), "); got ", k);
    p.k = k;
  }
};

// The calls of an edge function, one per entry of zs; every list argument has zs's length.
std::vector<TailCall> tail_calls(const char* fn, const std::vector<at::Tensor>& zs,
                                 bool edge) {
  FD_CHECK_ARG(!zs.empty(), fn, "zs", "must hold at least one op output");
  std::vector<TailCall> calls;
  calls.reserve(zs.size());
  for (size_t j = 0; j < zs.size(); ++j) {
    calls.emplace_back(fn, zs[j], edge ? static_cast<int64_t>(j) : -1);
    if (j > 0) calls[0].activation(zs[j], calls[j].arg("z", "zs"), zs[0].scalar_type());
  }
  return calls;
}

// Every list argument (name, list, name, list, ...) has one entry per op output.
inline void check_entries(const char*, size_t) {}

template <typename List, typename... Rest>
void check_entries(const char* fn, size_t n, const char* name, const List& list,
                   const Rest&... rest) {
  FD_CHECK_ARG(list.size() == n, fn, name, "must have one entry per op output (", n,
               "); got ", list.size());
  check_entries(fn, n, rest...);
}

// Per-channel outputs of a call: one (C,) vector per op, in the accumulation dtype (separate
// tensors: views of one (n, C) tensor would cost an unbind, more host time than the kernel
// call at search sizes).
std::vector<at::Tensor> new_vecs(const std::vector<TailCall>& calls) {
  const TailCall& c = calls.front();
  const auto opts = c.z.options().dtype(acc_type(c.z));
  std::vector<at::Tensor> out;
  out.reserve(calls.size());
  for (size_t j = 0; j < calls.size(); ++j) out.push_back(at::empty({c.p.C}, opts));
  return out;
}

// Runs the CPU kernel per op or, on CUDA, the launcher on batches of up to kMaxTailOps ops
// (one launch set per batch) on the current stream; the reductions get their workspace.
template <typename Cpu, typename Cuda>
void run_tails(std::vector<TailCall>& calls, bool reduction, Cpu cpu, Cuda cuda) {
  const TailCall& first = calls.front();
  if (first.z.is_cuda()) {
#ifdef FASTDARTS_WITH_CUDA
    const c10::cuda::CUDAGuard guard(first.z.device());
    at::Tensor ws;
    if (reduction) {  // per op: partial sums of 2 quantities per (row chunk, channel)
      const int64_t chunks = bn_num_chunks(first.p.N * first.p.S);
      const int64_t per_op = 2 * chunks * first.p.C;
      ws = at::empty({static_cast<int64_t>(calls.size()) * per_op},
                     first.z.options().dtype(at::kFloat));
      for (size_t j = 0; j < calls.size(); ++j) {
        calls[j].p.partials = ws.data_ptr<float>() + j * per_op;
        calls[j].p.num_chunks = chunks;
      }
    }
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    for (size_t b = 0; b < calls.size(); b += kMaxTailOps) {
      BnTailBatch batch;
      batch.dtype = first.p.dtype;
      batch.n = static_cast<int>(std::min<size_t>(kMaxTailOps, calls.size() - b));
      for (int j = 0; j < batch.n; ++j) batch.op[j] = calls[b + j].p;
      const cudaError_t err = cuda(batch, stream);
      TORCH_CHECK(err == cudaSuccess, first.fn, ": ", cudaGetErrorString(err));
    }
#else
    (void)cuda;
    (void)reduction;
    TORCH_CHECK(false, first.fn, ": fastdarts._C was built without CUDA");
#endif
  } else {
    for (TailCall& c : calls) cpu(c.p);
  }
}

#ifdef FASTDARTS_WITH_CUDA
#define FD_CUDA_LAUNCHER(name) name
#else
#define FD_CUDA_LAUNCHER(name) nullptr
#endif

// Statistics of each z; with running buffers also BatchNorm's update of them.
std::vector<std::vector<at::Tensor>> stats_impl(const char* fn,
                                                const std::vector<at::Tensor>& zs,
                                                const std::vector<double>& eps,
                                                const std::vector<OptTensor>& running_means,
                                                const std::vector<OptTensor>& running_vars,
                                                const std::vector<OptTensor>& nbts,
                                                const std::vector<double>& momenta, bool edge) {
  std::vector<TailCall> calls = tail_calls(fn, zs, edge);
  const size_t n = zs.size();
  check_entries(fn, n, "eps", eps, "running_means", running_means, "running_vars", running_vars,
                "num_batches_tracked", nbts, "momenta", momenta);
  std::vector<at::Tensor> mean = new_vecs(calls), var = new_vecs(calls), rstd = new_vecs(calls);
  for (size_t j = 0; j < n; ++j) {
    TailCall& call = calls[j];
    FD_CHECK_ARG(eps[j] >= 0, fn, call.arg("eps", "eps").str().c_str(), "must be >= 0; got ",
                 eps[j]);
    // The BN's running buffers, updated in the same pass (all given, or none).
    call.p.running_mean =
        const_cast<void*>(call.channel_vec(running_means[j], "running_mean", "running_means"));
    call.p.running_var =
        const_cast<void*>(call.channel_vec(running_vars[j], "running_var", "running_vars"));
    FD_CHECK_ARG((call.p.running_mean == nullptr) == (call.p.running_var == nullptr), fn,
                 call.arg("running_var", "running_vars").str().c_str(),
                 "must be given exactly when ", call.arg("running_mean", "running_means"), " is");
    if (nbts[j].has_value() && nbts[j]->defined()) {
      const at::Tensor& nbt = *nbts[j];
      const ArgName name = call.arg("num_batches_tracked", "num_batches_tracked");
      FD_CHECK_ARG(call.p.running_mean != nullptr, fn, name.str().c_str(),
                   "needs running_mean and running_var");
      FD_CHECK_ARG(nbt.numel() == 1 && nbt.scalar_type() == at::kLong, fn, name.str().c_str(),
                   "must be one int64 value; got ", shape_str(nbt), " ",
                   c10::toString(nbt.scalar_type()));
      FD_CHECK_ARG(nbt.device() == call.z.device(), fn, name.str().c_str(), "must be on ",
                   call.z.device().str(), "; got ", nbt.device().str());
      call.p.num_batches_tracked = nbt.data_ptr<int64_t>();
    }
    FD_CHECK_ARG(momenta[j] >= 0 && momenta[j] <= 1, fn,
                 call.arg("momentum", "momenta").str().c_str(), "must lie in [0, 1]; got ",
                 momenta[j]);
    call.p.momentum = momenta[j];
    call.p.eps = eps[j];
    call.p.out0 = mean[j].data_ptr();
    call.p.out1 = var[j].data_ptr();
    call.p.out2 = rstd[j].data_ptr();
  }
  run_tails(calls, true, bn_stats_cpu, FD_CUDA_LAUNCHER(launch_bn_stats));
  return {mean, var, rstd};
}

// acc (=|+=) sum_j w[k_j] * tail_j(z_j), in op order.
void accumulate_impl(const char* fn, at::Tensor& acc, const std::vector<at::Tensor>& zs,
                     const at::Tensor& w, const std::vector<int64_t>& ks,
                     const std::vector<OptTensor>& means, const std::vector<OptTensor>& rstds,
                     const std::vector<OptTensor>& gammas, const std::vector<OptTensor>& betas,
                     bool init, bool edge) {
  std::vector<TailCall> calls = tail_calls(fn, zs, edge);
  const size_t n = zs.size();
  check_entries(fn, n, "ks", ks, "means", means, "rstds", rstds, "gammas", gammas, "betas",
                betas);
  void* acc_ptr = const_cast<void*>(calls[0].activation(acc, "acc", acc_type(zs[0])));
  for (size_t j = 0; j < n; ++j) {
    TailCall& call = calls[j];
    call.p.acc = acc_ptr;
    call.weights(w, ks[j]);
    call.normalisation(means[j], rstds[j]);
    call.affine(gammas[j], betas[j]);
    call.p.init = init && j == 0;  // the later ops add to the first
  }
  run_tails(calls, false, bn_accumulate_cpu, FD_CUDA_LAUNCHER(launch_bn_accumulate));
}

// (sum g, sum g * xhat_j) per channel; with dw also dw[k_j] for every op.
std::vector<std::vector<at::Tensor>> grad_reduce_impl(const char* fn, const at::Tensor& g,
                                         const std::vector<at::Tensor>& zs,
                                         const std::vector<OptTensor>& means,
                                         const std::vector<OptTensor>& rstds,
                                         const std::vector<OptTensor>& gammas,
                                         const std::vector<OptTensor>& betas,
                                         const OptTensor& dw, const std::vector<int64_t>& ks,
                                         bool edge) {
  std::vector<TailCall> calls = tail_calls(fn, zs, edge);
  const size_t n = zs.size();
  check_entries(fn, n, "means", means, "rstds", rstds, "gammas", gammas, "betas", betas, "ks",
                ks);
  const void* g_ptr = calls[0].activation(g, "g", zs[0].scalar_type());
  void* dw_ptr = nullptr;
  if (dw.has_value() && dw->defined()) {  // the mixing-weight gradients, entries k_j written
    FD_CHECK_ARG(dw->dim() == 1, fn, "dw", "must be 1-D (one entry per op); got ",
                 shape_str(*dw));
    dw_ptr = const_cast<void*>(calls[0].vec(dw, "dw", dw->size(0)));
  }
  std::vector<at::Tensor> sum_g = new_vecs(calls), sum_gx = new_vecs(calls);
  for (size_t j = 0; j < n; ++j) {
    TailCall& call = calls[j];
    call.p.g = g_ptr;
    call.normalisation(means[j], rstds[j]);
    call.affine(gammas[j], betas[j]);
    if (dw_ptr != nullptr) {
      FD_CHECK_ARG(ks[j] >= 0 && ks[j] < dw->size(0), fn, call.arg("k", "ks").str().c_str(),
                   "must index dw (0 <= k < ", dw->size(0), "); got ", ks[j]);
      call.p.dw = dw_ptr;
      call.p.k = ks[j];
    }
    call.p.out0 = sum_g[j].data_ptr();
    call.p.out1 = sum_gx[j].data_ptr();
  }
  run_tails(calls, true, bn_grad_reduce_cpu, FD_CUDA_LAUNCHER(launch_bn_grad_reduce));
  return {sum_g, sum_gx};
}

// dz_j through each op's BN tail (batch or fixed statistics).
std::vector<at::Tensor> grad_input_impl(const char* fn, const at::Tensor& g,
                                        const std::vector<at::Tensor>& zs, const at::Tensor& w,
                                        const std::vector<int64_t>& ks,
                                        const std::vector<OptTensor>& means,
                                        const std::vector<OptTensor>& rstds,
                                        const std::vector<OptTensor>& gammas,
                                        const std::vector<OptTensor>& sum_gs,
                                        const std::vector<OptTensor>& sum_gxs,
                                        const std::vector<bool>& batch_stats, bool edge) {
  std::vector<TailCall> calls = tail_calls(fn, zs, edge);
  const size_t n = zs.size();
  check_entries(fn, n, "ks", ks, "means", means, "rstds", rstds, "gammas", gammas, "sum_gs",
                sum_gs, "sum_gxs", sum_gxs, "batch_stats", batch_stats);
  const void* g_ptr = calls[0].activation(g, "g", zs[0].scalar_type());
  std::vector<at::Tensor> dzs;
  dzs.reserve(n);
  for (size_t j = 0; j < n; ++j) {
    TailCall& call = calls[j];
    call.p.g = g_ptr;
    call.weights(w, ks[j]);
    call.normalisation(means[j], rstds[j]);
    call.p.gamma = call.channel_vec(gammas[j], "gamma", "gammas");
    call.p.sum_g = call.channel_vec(sum_gs[j], "sum_g", "sum_gs");
    call.p.sum_gx = call.channel_vec(sum_gxs[j], "sum_gx", "sum_gxs");
    call.p.batch_stats = batch_stats[j];
    FD_CHECK_ARG(!(batch_stats[j] && call.p.mean != nullptr) ||
                     (call.p.sum_g != nullptr && call.p.sum_gx != nullptr),
                 fn, call.arg("sum_g", "sum_gs").str().c_str(), "and ",
                 call.arg("sum_gx", "sum_gxs"), " are required with batch statistics");
    dzs.push_back(at::empty_like(zs[j]));
    call.p.dz = dzs.back().data_ptr();
  }
  run_tails(calls, false, bn_grad_input_cpu, FD_CUDA_LAUNCHER(launch_bn_grad_input));
  return dzs;
}

// One-op functions: one op's tail per call.
std::vector<at::Tensor> bn_stats(const at::Tensor& z, double eps,
                                 const OptTensor& running_mean, const OptTensor& running_var,
                                 const OptTensor& num_batches_tracked, double momentum) {
  const auto out = stats_impl("bn_stats", {z}, {eps}, {running_mean}, {running_var},
                              {num_batches_tracked}, {momentum}, false);
  return {out[0][0], out[1][0], out[2][0]};
}

void bn_accumulate(at::Tensor& acc, const at::Tensor& z, const at::Tensor& w, int64_t k,
                   const OptTensor& mean, const OptTensor& rstd, const OptTensor& gamma,
                   const OptTensor& beta, bool init) {
  accumulate_impl("bn_accumulate", acc, {z}, w, {k}, {mean}, {rstd}, {gamma}, {beta}, init,
                  false);
}

std::vector<at::Tensor> bn_grad_reduce(const at::Tensor& g, const at::Tensor& z,
                                       const OptTensor& mean, const OptTensor& rstd,
                                       const OptTensor& gamma, const OptTensor& beta,
                                       const OptTensor& dw, int64_t k) {
  const auto out = grad_reduce_impl("bn_grad_reduce", g, {z}, {mean}, {rstd}, {gamma}, {beta},
                                    dw, {k}, false);
  return {out[0][0], out[1][0]};
}

at::Tensor bn_grad_input(const at::Tensor& g, const at::Tensor& z, const at::Tensor& w,
                         int64_t k, const OptTensor& mean, const OptTensor& rstd,
                         const OptTensor& gamma, const OptTensor& sum_g,
                         const OptTensor& sum_gx, bool batch_stats) {
  return grad_input_impl("bn_grad_input", g, {z}, w, {k}, {mean}, {rstd}, {gamma}, {sum_g},
                         {sum_gx}, {batch_stats}, false)[0];
}

// Edge functions: every op of an edge in one call (on CUDA one launch set per 8 ops).
std::vector<std::vector<at::Tensor>> bn_stats_edge(const std::vector<at::Tensor>& zs,
                                      const std::vector<double>& eps,
                                      const std::vector<OptTensor>& running_means,
                                      const std::vector<OptTensor>& running_vars,
                                      const std::vector<OptTensor>& num_batches_tracked,
                                      const std::vector<double>& momenta) {
  return stats_impl("bn_stats_edge", zs, eps, running_means, running_vars, num_batches_tracked,
                    momenta, true);
}

void bn_accumulate_edge(at::Tensor& acc, const std::vector<at::Tensor>& zs, const at::Tensor& w,
                        const std::vector<int64_t>& ks, const std::vector<OptTensor>& means,
                        const std::vector<OptTensor>& rstds,
                        const std::vector<OptTensor>& gammas,
                        const std::vector<OptTensor>& betas, bool init) {
  accumulate_impl("bn_accumulate_edge", acc, zs, w, ks, means, rstds, gammas, betas, init,
                  true);
}

std::vector<std::vector<at::Tensor>> bn_grad_reduce_edge(const at::Tensor& g,
                                            const std::vector<at::Tensor>& zs,
                                            const std::vector<OptTensor>& means,
                                            const std::vector<OptTensor>& rstds,
                                            const std::vector<OptTensor>& gammas,
                                            const std::vector<OptTensor>& betas,
                                            const OptTensor& dw, const std::vector<int64_t>& ks) {
  return grad_reduce_impl("bn_grad_reduce_edge", g, zs, means, rstds, gammas, betas, dw, ks,
                          true);
}

std::vector<at::Tensor> bn_grad_input_edge(
    const at::Tensor& g, const std::vector<at::Tensor>& zs, const at::Tensor& w,
    const std::vector<int64_t>& ks, const std::vector<OptTensor>& means,
    const std::vector<OptTensor>& rstds, const std::vector<OptTensor>& gammas,
    const std::vector<OptTensor>& sum_gs, const std::vector<OptTensor>& sum_gxs,
    const std::vector<bool>& batch_stats) {
  return grad_input_impl("bn_grad_input_edge", g, zs, w, ks, means, rstds, gammas, sum_gs,
                         sum_gxs, batch_stats, true);
}

// ---------------------------------------------------------------------------------------
// Partial-channel combine (partial_channel.h): any strides; x, m, out and g share dtype and
// device; beta is a 0-dim tensor in the accumulation dtype or absent (1).

struct PartialCall {
  const char* fn;
  const at::Tensor& x;
  PartialChannelParams p{};

  PartialCall(const char* fn_, const at::Tensor& x_, const OptTensor& beta, int64_t K,
              int64_t stride)
      : fn(fn_), x(x_) {
    FD_CHECK_ARG(x.dim() == 4, fn, "x", "must be 4-D (N, C, H, W); got shape ", shape_str(x));
    p.dtype = to_dtype(x, fn, "x");
    if (x.is_cuda()) {
      FD_CHECK_ARG(p.dtype != DType::kFloat64, fn, "x", "float64 is not supported on CUDA");
    } else {
      FD_CHECK_ARG(p.dtype == DType::kFloat32 || p.dtype == DType::kFloat64, fn, "x",
                   "must be float32 or float64 on the CPU; got ",
                   c10::toString(x.scalar_type()));
    }
    FD_CHECK_ARG(K >= 2, fn, "K", "must be >= 2 (K = 1 has no bypass); got ", K);
    FD_CHECK_ARG(x.size(1) % K == 0, fn, "K", "must divide the channels (", x.size(1),
                 "); got ", K);
    FD_CHECK_ARG(stride == 1 || stride == 2, fn, "stride", "must be 1 or 2; got ", stride);
    p.N = x.size(0);
    p.C = x.size(1);
    p.K = K;
    p.P = p.C / K;
    p.stride = stride;
    p.Hx = x.size(2);
    p.Wx = x.size(3);
    p.H = stride == 1 ? p.Hx : p.Hx / 2;
    p.W = stride == 1 ? p.Wx : p.Wx / 2;
    for (int d = 0; d < 4; ++d) p.sx[d] = x.stride(d);
    p.x = x.data_ptr();
    if (beta.has_value() && beta->defined()) {
      const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
      FD_CHECK_ARG(beta->numel() == 1, fn, "beta", "must hold one value; got shape ",
                   shape_str(*beta));
      FD_CHECK_ARG(beta->scalar_type() == acc, fn, "beta", "must be ", c10::toString(acc),
                   "; got ", c10::toString(beta->scalar_type()));
      FD_CHECK_ARG(beta->device() == x.device(), fn, "beta", "must be on ", x.device().str(),
                   "; got ", beta->device().str());
      p.beta = beta->data_ptr();
    }
  }

  // A (N, channels, H, W) activation on x's device and dtype; fills `strides`.
  void* activation(const at::Tensor& t, const char* name, int64_t channels, int64_t* strides) {
    FD_CHECK_ARG(t.dim() == 4 && t.size(0) == p.N && t.size(1) == channels &&
                     t.size(2) == p.H && t.size(3) == p.W,
                 fn, name, "must have shape [", p.N, ", ", channels, ", ", p.H, ", ", p.W,
                 "]; got ", shape_str(t));
    FD_CHECK_ARG(t.device() == x.device(), fn, name, "must be on ", x.device().str(), "; got ",
                 t.device().str());
    FD_CHECK_ARG(t.scalar_type() == x.scalar_type(), fn, name, "must have x's dtype ",
                 c10::toString(x.scalar_type()), "; got ", c10::toString(t.scalar_type()));
    for (int d = 0; d < 4; ++d) strides[d] = t.stride(d);
    return t.data_ptr();
  }

  template <typename Cpu, typename Cuda>
  void run(Cpu cpu, Cuda cuda) { run_kernel(fn, x, p, cpu, cuda); }
};

at::Tensor partial_combine_fwd(const OptTensor& out, const at::Tensor& m, const at::Tensor& x,
                               const OptTensor& beta, int64_t K, int64_t stride,
                               bool accumulate) {
  PartialCall call("partial_combine_fwd", x, beta, K, stride);
  call.p.m = call.activation(m, "m", call.p.P, call.p.sm);
  at::Tensor result;
  if (out.has_value() && out->defined()) {
    result = *out;
  } else {
    FD_CHECK_ARG(!accumulate, call.fn, "out", "must be given to accumulate into");
    result = at::empty({call.p.N, call.p.C, call.p.H, call.p.W},
                       m.options().memory_format(m.suggest_memory_format()));
  }
  call.p.out = call.activation(result, "out", call.p.C, call.p.so);
  call.p.channels_last = result.is_contiguous(at::MemoryFormat::ChannelsLast) &&
                         !result.is_contiguous();
  call.p.accumulate = accumulate;
  call.run(partial_combine_fwd_cpu, FD_CUDA_LAUNCHER(launch_partial_combine_fwd));
  return result;
}

std::vector<at::Tensor> partial_combine_bwd(const at::Tensor& g, const at::Tensor& x,
                                            const OptTensor& beta, int64_t K, int64_t stride) {
  PartialCall call("partial_combine_bwd", x, beta, K, stride);
  call.p.g = call.activation(g, "g", call.p.C, call.p.so);
  call.p.channels_last = g.is_contiguous(at::MemoryFormat::ChannelsLast) && !g.is_contiguous();
  const auto fmt = g.suggest_memory_format();
  at::Tensor g_m = at::empty({call.p.N, call.p.P, call.p.H, call.p.W},
                             g.options().memory_format(fmt));
  // dx is addressed with x's strides (p.sx), so it gets exactly x's strides, size-1 dims too.
  FD_CHECK_ARG(x.is_non_overlapping_and_dense(), call.fn, "x",
               "must be dense (e.g. NCHW or channels_last contiguous)");
  at::Tensor dx = at::empty_strided(x.sizes(), x.strides(), x.options()).zero_();
  call.p.g_m = call.activation(g_m, "g_m", call.p.P, call.p.sm);
  call.p.dx = dx.data_ptr();
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t elements = call.p.N * call.p.C * call.p.H * call.p.W;
#ifdef FASTDARTS_WITH_CUDA
  call.p.num_blocks = x.is_cuda() ? partial_combine_bwd_blocks(elements) : 64;
#else
  call.p.num_blocks = 64;
#endif
  (void)elements;
  at::Tensor partials = at::empty({call.p.num_blocks}, x.options().dtype(acc));
  call.p.dbeta_partials = partials.data_ptr();
  call.run(partial_combine_bwd_cpu, FD_CUDA_LAUNCHER(launch_partial_combine_bwd));
  return {g_m, dx, partials.sum()};
}

// ---------------------------------------------------------------------------------------
// Finite-difference HVP (hvp.h): flat buffers of one dtype and device, each 1-D and
// contiguous with the same number of elements; the squared norm is a 1-value tensor in the
// accumulation dtype on the same device.

struct HvpCall {
  const char* fn;
  const at::Tensor& ref;  // the buffer that fixes dtype, device and size
  HvpParams p{};

  HvpCall(const char* fn_, const at::Tensor& ref_, const char* ref_name) : fn(fn_), ref(ref_) {
    FD_CHECK_ARG(ref.dim() == 1, fn, ref_name, "must be a flat 1-D buffer; got shape ",
                 shape_str(ref));
    FD_CHECK_ARG(ref.is_contiguous(), fn, ref_name, "must be contiguous");
    p.dtype = to_dtype(ref, fn, ref_name);
    if (ref.is_cuda()) {
      FD_CHECK_ARG(p.dtype != DType::kFloat64, fn, ref_name, "float64 is not supported on CUDA");
    } else {
      FD_CHECK_ARG(p.dtype == DType::kFloat32 || p.dtype == DType::kFloat64, fn, ref_name,
                   "must be float32 or float64 on the CPU; got ",
                   c10::toString(ref.scalar_type()));
    }
    p.n = ref.numel();
  }

  at::ScalarType acc() const { return ref.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

  // Another flat buffer like `ref` (null when absent and optional).
  const void* buffer(const OptTensor& t, const char* name, bool optional = false) const {
    if (!t.has_value() || !t->defined()) {
      FD_CHECK_ARG(optional, fn, name, "is required");
      return nullptr;
    }
    FD_CHECK_ARG(t->dim() == 1 && t->numel() == p.n, fn, name, "must have shape [", p.n,
                 "]; got ", shape_str(*t));
    FD_CHECK_ARG(t->is_contiguous(), fn, name, "must be contiguous");
    FD_CHECK_ARG(t->device() == ref.device(), fn, name, "must be on ", ref.device().str(),
                 "; got ", t->device().str());
    FD_CHECK_ARG(t->scalar_type() == ref.scalar_type(), fn, name, "must have dtype ",
                 c10::toString(ref.scalar_type()), "; got ", c10::toString(t->scalar_type()));
    return t->data_ptr();
  }

  void squared_norm(const at::Tensor& sq) {
    FD_CHECK_ARG(sq.numel() == 1, fn, "sq_norm", "must hold one value; got shape ",
                 shape_str(sq));
    FD_CHECK_ARG(sq.scalar_type() == acc(), fn, "sq_norm", "must be ", c10::toString(acc()),
                 "; got ", c10::toString(sq.scalar_type()));
    FD_CHECK_ARG(sq.device() == ref.device(), fn, "sq_norm", "must be on ",
                 ref.device().str(), "; got ", sq.device().str());
    p.sq = sq.data_ptr();
  }

  void radius(double r) {
    FD_CHECK_ARG(std::isfinite(r) && r > 0, fn, "r", "must be a positive finite number; got ", r);
    p.r = r;
  }

  template <typename Cpu, typename Cuda>
  void run(Cpu cpu, Cuda cuda) { run_kernel(fn, ref, p, cpu, cuda); }
};

void hvp_virtual_step(at::Tensor& out, const at::Tensor& w, const at::Tensor& g,
                      const OptTensor& m, double lr, double momentum, double weight_decay) {
  HvpCall call("hvp_virtual_step", w, "w");
  call.p.w = w.data_ptr();
  call.p.g = call.buffer(g, "g");
  call.p.m = call.buffer(m, "m", /*optional=*/true);
  call.p.out = const_cast<void*>(call.buffer(out, "out"));
  FD_CHECK_ARG(std::isfinite(lr), call.fn, "lr", "must be finite; got ", lr);
  FD_CHECK_ARG(std::isfinite(momentum), call.fn, "momentum", "must be finite; got ", momentum);
  FD_CHECK_ARG(std::isfinite(weight_decay), call.fn, "weight_decay", "must be finite; got ",
               weight_decay);
  call.p.lr = lr;
  call.p.momentum = momentum;
  call.p.weight_decay = weight_decay;
  call.run(hvp_virtual_step_cpu, FD_CUDA_LAUNCHER(launch_hvp_virtual_step));
}

at::Tensor hvp_sq_norm(const at::Tensor& v) {
  HvpCall call("hvp_sq_norm", v, "v");
  call.p.v = v.data_ptr();
  at::Tensor sq = at::empty({1}, v.options().dtype(call.acc()));
  call.p.sq_out = sq.data_ptr();
  at::Tensor partials;
#ifdef FASTDARTS_WITH_CUDA
  if (v.is_cuda()) {
    call.p.num_blocks = hvp_sq_norm_blocks(call.p.n);
    partials = at::empty({call.p.num_blocks}, v.options().dtype(at::kFloat));
    call.p.partials = partials.data_ptr();
  }
#endif
  call.run(hvp_sq_norm_cpu, FD_CUDA_LAUNCHER(launch_hvp_sq_norm));
  return sq;
}

void hvp_perturb(at::Tensor& out, const at::Tensor& w, const at::Tensor& v,
                 const at::Tensor& sq_norm, double r, double sign) {
  HvpCall call("hvp_perturb", w, "w");
  call.p.w = w.data_ptr();
  call.p.v = call.buffer(v, "v");
  call.p.out = const_cast<void*>(call.buffer(out, "out"));
  call.squared_norm(sq_norm);
  call.radius(r);
  FD_CHECK_ARG(sign == 1.0 || sign == -1.0, call.fn, "sign", "must be +1 or -1; got ", sign);
  call.p.sign = sign;
  call.run(hvp_perturb_cpu, FD_CUDA_LAUNCHER(launch_hvp_perturb));
}

at::Tensor hvp_combine(const OptTensor& g_val, const at::Tensor& g_plus,
                       const at::Tensor& g_minus, const at::Tensor& sq_norm, double r,
                       double scale) {
  HvpCall call("hvp_combine", g_plus, "g_plus");
  call.p.g_plus = g_plus.data_ptr();
  call.p.g_minus = call.buffer(g_minus, "g_minus");
  call.p.g_val = call.buffer(g_val, "g_val", /*optional=*/true);
  call.squared_norm(sq_norm);
  call.radius(r);
  FD_CHECK_ARG(std::isfinite(scale), call.fn, "scale", "must be finite; got ", scale);
  call.p.scale = scale;
  at::Tensor out = at::empty_like(g_plus);
  call.p.out = out.data_ptr();
  call.run(hvp_combine_cpu, FD_CUDA_LAUNCHER(launch_hvp_combine));
  return out;
}

// ---------------------------------------------------------------------------------------
// Depthwise-convolution backward (depthwise_conv.h), CPU only: x (N, C, H, W), weight
// (C, 1, kh, kw), g (N, C, Ho, Wo) with Ho, Wo those of the forward; one dtype.

std::vector<at::Tensor> depthwise_conv_bwd(const at::Tensor& g, const at::Tensor& x,
                                           const at::Tensor& weight,
                                           std::vector<int64_t> stride,
                                           std::vector<int64_t> padding,
                                           std::vector<int64_t> dilation, bool need_dx,
                                           bool need_dweight) {
  const char* fn = "depthwise_conv_bwd";
  FD_CHECK_ARG(x.dim() == 4, fn, "x", "must be 4-D (N, C, H, W); got shape ", shape_str(x));
  FD_CHECK_ARG(x.device().is_cpu(), fn, "x", "must be on the CPU; got ", x.device().str());
  DepthwiseConvParams p{};
  p.dtype = to_dtype(x, fn, "x");
  FD_CHECK_ARG(p.dtype == DType::kFloat32 || p.dtype == DType::kFloat64, fn, "x",
               "must be float32 or float64; got ", c10::toString(x.scalar_type()));
  for (const auto& [vec, name] : {std::pair{&stride, "stride"}, std::pair{&padding, "padding"},
                                  std::pair{&dilation, "dilation"}})
    FD_CHECK_ARG(vec->size() == 2, fn, name, "must have 2 entries (h, w); got ", vec->size());
  p.N = x.size(0), p.C = x.size(1), p.H = x.size(2), p.W = x.size(3);
  FD_CHECK_ARG(weight.dim() == 4 && weight.size(0) == p.C && weight.size(1) == 1, fn, "weight",
               "must have shape (", p.C, ", 1, kh, kw) (one filter per channel); got ",
               shape_str(weight));
  p.kh = weight.size(2), p.kw = weight.size(3);
  p.sh = stride[0], p.sw = stride[1], p.ph = padding[0], p.pw = padding[1];
  p.dh = dilation[0], p.dw = dilation[1];
  FD_CHECK_ARG(p.sh > 0 && p.sw > 0, fn, "stride", "must be positive");
  FD_CHECK_ARG(p.dh > 0 && p.dw > 0, fn, "dilation", "must be positive");
  FD_CHECK_ARG(p.ph >= 0 && p.pw >= 0, fn, "padding", "must be non-negative");
  p.Ho = (p.H + 2 * p.ph - p.dh * (p.kh - 1) - 1) / p.sh + 1;
  p.Wo = (p.W + 2 * p.pw - p.dw * (p.kw - 1) - 1) / p.sw + 1;
  FD_CHECK_ARG(g.dim() == 4 && g.size(0) == p.N && g.size(1) == p.C && g.size(2) == p.Ho &&
                   g.size(3) == p.Wo,
               fn, "g", "must have the forward output's shape [", p.N, ", ", p.C, ", ", p.Ho,
               ", ", p.Wo, "]; got ", shape_str(g));
  for (const auto& [t, name] : {std::pair{&g, "g"}, std::pair{&weight, "weight"}}) {
    FD_CHECK_ARG(t->scalar_type() == x.scalar_type(), fn, name, "must have x's dtype ",
                 c10::toString(x.scalar_type()), "; got ", c10::toString(t->scalar_type()));
    FD_CHECK_ARG(t->device() == x.device(), fn, name, "must be on ", x.device().str(),
                 "; got ", t->device().str());
  }
  // One layout for x, g and dx: channels last when x is (and is not also plain contiguous).
  p.channels_last = x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
  const auto fmt = p.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor xc = x.contiguous(fmt), gc = g.contiguous(fmt);
  const at::Tensor wc = weight.contiguous();
  at::Tensor dx = need_dx ? at::empty(x.sizes(), x.options().memory_format(fmt)) : at::Tensor();
  at::Tensor dweight = need_dweight ? at::empty(weight.sizes(), weight.options()) : at::Tensor();
  p.x = xc.data_ptr(), p.g = gc.data_ptr(), p.weight = wc.data_ptr();
  p.dx = need_dx ? dx.data_ptr() : nullptr;
  p.dweight = need_dweight ? dweight.data_ptr() : nullptr;
  if (p.N * p.C * p.Ho * p.Wo > 0 && p.H * p.W > 0)
    depthwise_conv_bwd_cpu(p);
  else {
    if (need_dx) dx.zero_();
    if (need_dweight) dweight.zero_();
  }
  return {dx, dweight};
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
  m.def("bn_stats", &fastdarts::bn_stats,
        "(mean, var, rstd) per channel of z; with running buffers also BatchNorm's update",
        py::arg("z"), py::arg("eps"), py::arg("running_mean") = py::none(),
        py::arg("running_var") = py::none(), py::arg("num_batches_tracked") = py::none(),
        py::arg("momentum") = 0.1);
  m.def("bn_accumulate", &fastdarts::bn_accumulate,
        "acc (=|+=) w[k] * (gamma * (z - mean) * rstd + beta)", py::arg("acc"), py::arg("z"),
        py::arg("w"), py::arg("k"), py::arg("mean"), py::arg("rstd"), py::arg("gamma"),
        py::arg("beta"), py::arg("init"));
  m.def("bn_grad_reduce", &fastdarts::bn_grad_reduce,
        "(sum g, sum g * xhat) per channel; with dw also dw[k] = sum gamma * sum_gx + beta * sum_g",
        py::arg("g"), py::arg("z"), py::arg("mean"), py::arg("rstd"),
        py::arg("gamma") = py::none(), py::arg("beta") = py::none(), py::arg("dw") = py::none(),
        py::arg("k") = 0);
  m.def("bn_grad_input", &fastdarts::bn_grad_input, "gradient of z through the BN tail",
        py::arg("g"), py::arg("z"), py::arg("w"), py::arg("k"), py::arg("mean"),
        py::arg("rstd"), py::arg("gamma"), py::arg("sum_g"), py::arg("sum_gx"),
        py::arg("batch_stats"));
  m.def("bn_stats_edge", &fastdarts::bn_stats_edge,
        "bn_stats of every op output of an edge: ([mean_j], [var_j], [rstd_j])",
        py::arg("zs"), py::arg("eps"), py::arg("running_means"), py::arg("running_vars"),
        py::arg("num_batches_tracked"), py::arg("momenta"));
  m.def("bn_accumulate_edge", &fastdarts::bn_accumulate_edge,
        "acc (=|+=) sum_j w[k_j] * (gamma_j * (z_j - mean_j) * rstd_j + beta_j), in op order",
        py::arg("acc"), py::arg("zs"), py::arg("w"), py::arg("ks"), py::arg("means"),
        py::arg("rstds"), py::arg("gammas"), py::arg("betas"), py::arg("init"));
  m.def("bn_grad_reduce_edge", &fastdarts::bn_grad_reduce_edge,
        "bn_grad_reduce of every op of an edge: ([sum g], [sum g * xhat_j])",
        py::arg("g"), py::arg("zs"), py::arg("means"), py::arg("rstds"), py::arg("gammas"),
        py::arg("betas"), py::arg("dw"), py::arg("ks"));
  m.def("bn_grad_input_edge", &fastdarts::bn_grad_input_edge,
        "bn_grad_input of every op of an edge: one dz per op", py::arg("g"), py::arg("zs"),
        py::arg("w"), py::arg("ks"), py::arg("means"), py::arg("rstds"), py::arg("gammas"),
        py::arg("sum_gs"), py::arg("sum_gxs"), py::arg("batch_stats"));
  m.def("partial_combine_fwd", &fastdarts::partial_combine_fwd,
        "out (=|+=) shuffle([m, beta * bypass(x)]): PC-DARTS's partial-channel edge output",
        py::arg("out"), py::arg("m"), py::arg("x"), py::arg("beta"), py::arg("K"),
        py::arg("stride"), py::arg("accumulate"));
  m.def("partial_combine_bwd", &fastdarts::partial_combine_bwd,
        "(g_m, dx, dbeta) of partial_combine_fwd given the node gradient g", py::arg("g"),
        py::arg("x"), py::arg("beta"), py::arg("K"), py::arg("stride"));
  m.def("hvp_virtual_step", &fastdarts::hvp_virtual_step,
        "out = w - lr * (momentum * m + g + weight_decay * w): SGD's step, virtually",
        py::arg("out"), py::arg("w"), py::arg("g"), py::arg("m"), py::arg("lr"),
        py::arg("momentum"), py::arg("weight_decay"));
  m.def("hvp_sq_norm", &fastdarts::hvp_sq_norm, "sum v^2 as a 1-value device tensor",
        py::arg("v"));
  m.def("hvp_perturb", &fastdarts::hvp_perturb, "out = w + sign * (r / ||v||) * v",
        py::arg("out"), py::arg("w"), py::arg("v"), py::arg("sq_norm"), py::arg("r"),
        py::arg("sign"));
  m.def("hvp_combine", &fastdarts::hvp_combine,
        "g_val + scale * (g_plus - g_minus) / (2 * r / ||v||)", py::arg("g_val"),
        py::arg("g_plus"), py::arg("g_minus"), py::arg("sq_norm"), py::arg("r"),
        py::arg("scale"));
  m.def("depthwise_conv_bwd", &fastdarts::depthwise_conv_bwd,
        "(dx, dweight) of a depthwise conv2d (CPU; None where not wanted)", py::arg("g"),
        py::arg("x"), py::arg("weight"), py::arg("stride"), py::arg("padding"),
        py::arg("dilation"), py::arg("need_dx"), py::arg("need_dweight"));
  m.def("with_cuda", &fastdarts::with_cuda, "whether the CUDA kernels were compiled in");
}
