// oneDNN batch normalisation for jax-zoo, called from XLA:CPU through the XLA FFI.
//
// Channels-last activations (N, H, W, C; any other rank is flattened to (rows, 1, 1, C) by the
// caller) in fp32 or bf16; scale, shift and the statistics are float32 vectors of C:
//   zoo_onednn_batch_norm_training  (x, scale, shift) -> (y, mean, variance, workspace)
//       normalises with the batch's mean and biased variance, which it returns;
//   zoo_onednn_batch_norm_inference (x, mean, variance, scale, shift) -> y
//       normalises with the given statistics;
//   zoo_onednn_batch_norm_backward  (x, d_y, mean, variance, scale, workspace)
//                                   -> (d_x, d_scale, d_shift)
//       the gradient of either, `use_global_stats` saying which (1: the inference one, where
//       mean and variance are constants).
// Each takes the attributes `epsilon` (float32, added to the variance), `relu` (1: y is
// max(normalised, 0), oneDNN's fused ReLU) and `num_threads`. The workspace (uint8) is where
// the training ReLU was positive, for its gradient: `zoo_onednn_batch_norm_workspace_bytes`
// long, empty without `relu` (the inference gradient with `relu` is not one of these calls).
// oneDNN's fused ReLU answers 0 for a NaN (x86's max gives its second operand); JAX's relu keeps
// the NaN, and so do these calls (`KeepNaNs`).
//
// Primitives are built once per (kind, shape, epsilon, threads) and cached under a mutex; each
// call brings its own scratchpad. `zoo_onednn_batch_norm_implementation` (plain C, through ctypes
// at trace time) names the implementation oneDNN picks, so Python keeps XLA's batch norm where
// oneDNN has only a reference kernel.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "onednn_common.h"
#include "xla/ffi/api/ffi.h"

namespace {

namespace ffi = xla::ffi;
using dnnl::memory;
using dnnl::normalization_flags;
using namespace zoo_onednn;

enum Kind : int64_t {
  kTraining = 0,          // forward with batch statistics
  kInference = 1,         // forward with given statistics
  kTrainingBackward = 2,  // gradient of kTraining
  kInferenceBackward = 3  // gradient of kInference
};

// Everything a primitive depends on; the layout of the ctypes query's `config` argument.
struct NormConfig {
  int64_t batch, height, width, channels;
  int64_t precision;
  int64_t epsilon_bits;  // the float32 epsilon's bits
  int64_t relu;          // 1: ReLU fused onto the result
  int64_t num_threads;
};

float Epsilon(const NormConfig& c) {
  const auto bits = static_cast<uint32_t>(c.epsilon_bits);
  float epsilon;
  std::memcpy(&epsilon, &bits, sizeof(float));
  return epsilon;
}

memory::desc ActivationDesc(const NormConfig& c) {
  return memory::desc({c.batch, c.channels, c.height, c.width}, DataType(c.precision),
                      memory::format_tag::nhwc);
}

memory::desc VectorDesc(const NormConfig& c) {
  return memory::desc({c.channels}, memory::data_type::f32, memory::format_tag::x);
}

bool UsesGlobalStats(Kind kind) { return kind == kInference || kind == kInferenceBackward; }

normalization_flags Flags(Kind kind, const NormConfig& c) {
  normalization_flags flags = normalization_flags::use_scale | normalization_flags::use_shift;
  if (UsesGlobalStats(kind)) flags = flags | normalization_flags::use_global_stats;
  if (c.relu) flags = flags | normalization_flags::fuse_norm_relu;
  return flags;
}

struct Plan {
  dnnl::primitive primitive;
  memory::desc scratchpad;
  memory::desc workspace;  // empty but for the training kinds with a fused ReLU
  std::string implementation;
};

// Builds the primitive of `kind`; nullptr where oneDNN has no implementation.
std::unique_ptr<Plan> MakePlan(Kind kind, const NormConfig& c) {
  const memory::desc x = ActivationDesc(c);
  const float epsilon = Epsilon(c);
  // The backward primitive's hint: the training-mode forward with the same flags.
  auto forward = dnnl::batch_normalization_forward::primitive_desc(
      Engine(),
      kind == kInference ? dnnl::prop_kind::forward_inference : dnnl::prop_kind::forward_training,
      x, x, epsilon, Flags(kind, c), UserScratchpad(), /*allow_empty=*/true);
  if (!forward) return nullptr;
  auto plan = std::make_unique<Plan>();
  if (kind == kTraining || kind == kInference) {
    plan->primitive = dnnl::batch_normalization_forward(forward);
    plan->scratchpad = forward.scratchpad_desc();
    plan->workspace = forward.workspace_desc();
    plan->implementation = forward.impl_info_str();
    return plan;
  }
  // The inference gradient of a fused ReLU would need the workspace its forward does not write.
  if (kind == kInferenceBackward && c.relu) return nullptr;
  auto backward = dnnl::batch_normalization_backward::primitive_desc(
      Engine(), dnnl::prop_kind::backward, x, x, x, epsilon, Flags(kind, c), forward,
      UserScratchpad(), /*allow_empty=*/true);
  if (!backward) return nullptr;
  plan->primitive = dnnl::batch_normalization_backward(backward);
  plan->scratchpad = backward.scratchpad_desc();
  plan->workspace = backward.workspace_desc();
  plan->implementation = backward.impl_info_str();
  return plan;
}

// The cached plan of a configuration (nullptr, also cached, where oneDNN has none).
const Plan* FindPlan(Kind kind, const NormConfig& c) { return CachedPlan(kind, c, &MakePlan); }

// The primitive's arguments: DNNL_ARG_* to a buffer of XLA's (activation-shaped, a vector or
// the workspace).
enum class Shape { kActivation, kVector, kWorkspace };

struct Argument {
  int name;
  void* data;
  Shape shape;
};

ffi::Error Run(Kind kind, const NormConfig& c, std::initializer_list<Argument> arguments) {
  try {
    const Plan* plan = FindPlan(kind, c);
    if (plan == nullptr) {
      return ffi::Error::InvalidArgument(
          "zoo_onednn_batch_norm: oneDNN has no kernel for this config");
    }
    dnnl::engine& engine = Engine();
    dnnl::stream& stream = Stream();
    UseThreads(c.num_threads);
    const memory::desc activation = ActivationDesc(c), vector = VectorDesc(c);
    std::unordered_map<int, memory> args;
    for (const Argument& a : arguments) {
      if (a.shape == Shape::kWorkspace && plan->workspace.get_size() == 0) continue;
      const memory::desc& desc = a.shape == Shape::kActivation ? activation
                                 : a.shape == Shape::kVector   ? vector
                                                               : plan->workspace;
      args.emplace(a.name, memory(desc, engine, a.data));
    }
    args.emplace(DNNL_ARG_SCRATCHPAD, memory(plan->scratchpad, engine));
    plan->primitive.execute(stream, args);
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("zoo_onednn_batch_norm: oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error ConfigFrom(const ffi::AnyBuffer& x, float epsilon, int64_t relu, int64_t num_threads,
                      NormConfig* c) {
  const auto dims = x.dimensions();
  if (dims.size() != 4 || num_threads < 1 || (relu != 0 && relu != 1)) {
    return ffi::Error::InvalidArgument("zoo_onednn_batch_norm: expects an NHWC operand");
  }
  const ffi::DataType dtype = x.element_type();
  if (dtype != ffi::DataType::F32 && dtype != ffi::DataType::BF16) {
    return ffi::Error::InvalidArgument("zoo_onednn_batch_norm: expects float32 or bfloat16");
  }
  uint32_t bits;
  std::memcpy(&bits, &epsilon, sizeof(float));
  *c = NormConfig{dims[0], dims[1], dims[2], dims[3],
                  dtype == ffi::DataType::BF16 ? kBFloat16 : kFloat32,
                  static_cast<int64_t>(bits), relu, num_threads};
  return ffi::Error::Success();
}

// The workspace XLA allocated must be the one the primitive reads or writes.
ffi::Error CheckWorkspace(Kind kind, const NormConfig& c, const ffi::AnyBuffer& workspace) {
  const Plan* plan = FindPlan(kind, c);
  if (plan == nullptr || workspace.size_bytes() != plan->workspace.get_size()) {
    return ffi::Error::InvalidArgument("zoo_onednn_batch_norm: workspace of the wrong size");
  }
  return ffi::Error::Success();
}

constexpr Shape kActivation = Shape::kActivation, kVector = Shape::kVector,
                kWorkspace = Shape::kWorkspace;

inline bool NonFinite(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return (bits & 0x7f800000u) == 0x7f800000u;
}

inline bool NonFinite(zoo_kernels::BFloat16 value) { return (value & 0x7f80u) == 0x7f80u; }

// Where the normalised value is NaN, the fused ReLU's 0 becomes that NaN, as in `jax.nn.relu`.
// It can be NaN only where x, or its channel's mean, variance, scale or shift, is not finite;
// in training a non-finite x makes its channel's mean so, and this pass reads only the vectors
// unless one is. Those elements are computed again with the XLA path's arithmetic (`_normalise`
// in zoo/ops/batch_norm.py). Inference reads x once more: each pixel's channels are checked
// together before any is computed again, so the check vectorises.
template <typename T>
void KeepNaNs(const NormConfig& c, bool read_x, const void* x_data, const float* mean,
              const float* variance, const float* scale, const float* shift, void* y_data) {
  const int64_t channels = c.channels, pixels = c.batch * c.height * c.width;
  std::vector<uint8_t> bad(channels);
  bool any_bad = false;
  for (int64_t k = 0; k < channels; ++k) {
    bad[k] = NonFinite(mean[k]) || NonFinite(variance[k]) || NonFinite(scale[k]) ||
             NonFinite(shift[k]);
    any_bad = any_bad || bad[k];
  }
  if (!read_x && !any_bad) return;
  const float epsilon = Epsilon(c);
  const T* x = static_cast<const T*>(x_data);
  T* y = static_cast<T*>(y_data);
#pragma omp parallel for num_threads(static_cast<int>(c.num_threads)) schedule(static)
  for (int64_t pixel = 0; pixel < pixels; ++pixel) {
    const T* x_pixel = x + pixel * channels;
    int found = 0;
    for (int64_t k = 0; k < channels; ++k) found |= bad[k] | (read_x && NonFinite(x_pixel[k]));
    if (found == 0) continue;
    for (int64_t k = 0; k < channels; ++k) {
      if (!bad[k] && !NonFinite(x_pixel[k])) continue;
      const float inverse_deviation = 1.0f / std::sqrt(variance[k] + epsilon);
      const float normalised = (zoo_kernels::ToFloat(x_pixel[k]) - mean[k]) * inverse_deviation;
      const float value = normalised * scale[k] + shift[k];
      y[pixel * channels + k] = zoo_kernels::Relu(zoo_kernels::FromFloat<T>(value));
    }
  }
}

void KeepNaNs(const NormConfig& c, bool read_x, const void* x, const void* mean,
              const void* variance, const void* scale, const void* shift, void* y) {
  const auto* m = static_cast<const float*>(mean);
  const auto* v = static_cast<const float*>(variance);
  const auto* g = static_cast<const float*>(scale);
  const auto* b = static_cast<const float*>(shift);
  if (c.precision == kBFloat16) {
    KeepNaNs<zoo_kernels::BFloat16>(c, read_x, x, m, v, g, b, y);
  } else {
    KeepNaNs<float>(c, read_x, x, m, v, g, b, y);
  }
}

ffi::Error Training(ffi::AnyBuffer x, ffi::AnyBuffer scale, ffi::AnyBuffer shift,
                    ffi::Result<ffi::AnyBuffer> y, ffi::Result<ffi::AnyBuffer> mean,
                    ffi::Result<ffi::AnyBuffer> variance, ffi::Result<ffi::AnyBuffer> workspace,
                    float epsilon, int64_t relu, int64_t num_threads) {
  NormConfig c;
  ffi::Error error = ConfigFrom(x, epsilon, relu, num_threads, &c);
  if (error.failure()) return error;
  error = CheckWorkspace(kTraining, c, *workspace);
  if (error.failure()) return error;
  error = Run(kTraining, c,
              {{DNNL_ARG_SRC, x.untyped_data(), kActivation},
               {DNNL_ARG_DST, y->untyped_data(), kActivation},
               {DNNL_ARG_SCALE, scale.untyped_data(), kVector},
               {DNNL_ARG_SHIFT, shift.untyped_data(), kVector},
               {DNNL_ARG_MEAN, mean->untyped_data(), kVector},
               {DNNL_ARG_VARIANCE, variance->untyped_data(), kVector},
               {DNNL_ARG_WORKSPACE, workspace->untyped_data(), kWorkspace}});
  if (error.failure() || !c.relu) return error;
  KeepNaNs(c, /*read_x=*/false, x.untyped_data(), mean->untyped_data(), variance->untyped_data(),
           scale.untyped_data(), shift.untyped_data(), y->untyped_data());
  return error;
}

ffi::Error Inference(ffi::AnyBuffer x, ffi::AnyBuffer mean, ffi::AnyBuffer variance,
                     ffi::AnyBuffer scale, ffi::AnyBuffer shift, ffi::Result<ffi::AnyBuffer> y,
                     float epsilon, int64_t relu, int64_t num_threads) {
  NormConfig c;
  ffi::Error error = ConfigFrom(x, epsilon, relu, num_threads, &c);
  if (error.failure()) return error;
  error = Run(kInference, c,
              {{DNNL_ARG_SRC, x.untyped_data(), kActivation},
               {DNNL_ARG_DST, y->untyped_data(), kActivation},
               {DNNL_ARG_MEAN, mean.untyped_data(), kVector},
               {DNNL_ARG_VARIANCE, variance.untyped_data(), kVector},
               {DNNL_ARG_SCALE, scale.untyped_data(), kVector},
               {DNNL_ARG_SHIFT, shift.untyped_data(), kVector}});
  if (error.failure() || !c.relu) return error;
  KeepNaNs(c, /*read_x=*/true, x.untyped_data(), mean.untyped_data(), variance.untyped_data(),
           scale.untyped_data(), shift.untyped_data(), y->untyped_data());
  return error;
}

ffi::Error Backward(ffi::AnyBuffer x, ffi::AnyBuffer d_y, ffi::AnyBuffer mean,
                    ffi::AnyBuffer variance, ffi::AnyBuffer scale, ffi::AnyBuffer workspace,
                    ffi::Result<ffi::AnyBuffer> d_x, ffi::Result<ffi::AnyBuffer> d_scale,
                    ffi::Result<ffi::AnyBuffer> d_shift, float epsilon, int64_t relu,
                    int64_t num_threads, int64_t use_global_stats) {
  NormConfig c;
  ffi::Error error = ConfigFrom(x, epsilon, relu, num_threads, &c);
  if (error.failure()) return error;
  const Kind kind = use_global_stats ? kInferenceBackward : kTrainingBackward;
  error = CheckWorkspace(kind, c, workspace);
  if (error.failure()) return error;
  return Run(kind, c,
             {{DNNL_ARG_SRC, x.untyped_data(), kActivation},
              {DNNL_ARG_DIFF_DST, d_y.untyped_data(), kActivation},
              {DNNL_ARG_DIFF_SRC, d_x->untyped_data(), kActivation},
              {DNNL_ARG_MEAN, mean.untyped_data(), kVector},
              {DNNL_ARG_VARIANCE, variance.untyped_data(), kVector},
              {DNNL_ARG_SCALE, scale.untyped_data(), kVector},
              {DNNL_ARG_DIFF_SCALE, d_scale->untyped_data(), kVector},
              {DNNL_ARG_DIFF_SHIFT, d_shift->untyped_data(), kVector},
              {DNNL_ARG_WORKSPACE, workspace.untyped_data(), kWorkspace}});
}

}  // namespace

ZOO_EXPORT XLA_FFI_Error* zoo_onednn_batch_norm_training(XLA_FFI_CallFrame* call_frame);
ZOO_EXPORT XLA_FFI_Error* zoo_onednn_batch_norm_inference(XLA_FFI_CallFrame* call_frame);
ZOO_EXPORT XLA_FFI_Error* zoo_onednn_batch_norm_backward(XLA_FFI_CallFrame* call_frame);

XLA_FFI_DEFINE_HANDLER_SYMBOL(zoo_onednn_batch_norm_training, Training,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<float>("epsilon")
                                  .Attr<int64_t>("relu")
                                  .Attr<int64_t>("num_threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(zoo_onednn_batch_norm_inference, Inference,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<float>("epsilon")
                                  .Attr<int64_t>("relu")
                                  .Attr<int64_t>("num_threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(zoo_onednn_batch_norm_backward, Backward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<float>("epsilon")
                                  .Attr<int64_t>("relu")
                                  .Attr<int64_t>("num_threads")
                                  .Attr<int64_t>("use_global_stats"));

// Which implementation oneDNN picks for `kind` (0 training, 1 inference, 2 and 3 their
// gradients) of `config` (the NormConfig fields in order, `config_size` of them): 1 a real
// kernel, 0 a reference kernel, -1 none. Its name goes to `implementation` (NUL-terminated).
ZOO_EXPORT int zoo_onednn_batch_norm_implementation(int64_t kind, const int64_t* config,
                                                    int64_t config_size, char* implementation,
                                                    int64_t implementation_size) {
  return QueryImplementation(kind, kInferenceBackward + 1, config, config_size, implementation,
                             implementation_size, &MakePlan);
}

// The bytes of the workspace of `kind` (0 training, 2 its gradient) of `config`, as for the
// query; -1 where oneDNN has no kernel for it.
ZOO_EXPORT int64_t zoo_onednn_batch_norm_workspace_bytes(int64_t kind, const int64_t* config,
                                                         int64_t config_size) {
  if (config_size != static_cast<int64_t>(kFields<NormConfig>) || kind < 0 ||
      kind > kInferenceBackward) {
    return -1;
  }
  NormConfig c;
  std::memcpy(&c, config, sizeof(NormConfig));
  try {
    const Plan* plan = FindPlan(static_cast<Kind>(kind), c);
    return plan == nullptr ? -1 : static_cast<int64_t>(plan->workspace.get_size());
  } catch (const dnnl::error&) {
    return -1;
  }
}

// The number of fields of the query's `config`, so Python can check it agrees.
ZOO_EXPORT int64_t zoo_onednn_batch_norm_config_fields() { return kFields<NormConfig>; }
