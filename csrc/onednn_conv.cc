// oneDNN convolutions for jax-zoo, called from XLA:CPU through the XLA FFI.
//
// Three handlers, one per direction of a 2-D convolution on NHWC activations and HWIO kernels
// (XLA's `feature_group_count` layout: I = C_in / groups, output feature o in group
// o / (O / groups)):
//   zoo_onednn_conv_forward          (lhs, rhs) -> out
//   zoo_onednn_conv_backward_data    (d_out, rhs) -> d_lhs
//   zoo_onednn_conv_backward_weights (lhs, d_out) -> d_rhs
// with the attributes window_strides[2], padding[4] (top, bottom, left, right; explicit, possibly
// asymmetric), rhs_dilation[2] (XLA's convention: 1 is no dilation), feature_group_count and
// num_threads (the OpenMP team each call runs on). fp32 and bf16; oneDNN accumulates bf16 in fp32.
//
// Primitives are built once per (direction, shape, parameters) and cached under a mutex; a
// primitive executes concurrently from XLA's threads because each call brings its own scratchpad. Kernels take the weight layout oneDNN prefers (format_tag::any), and
// the HWIO weights are reordered to and from it on every call.
//
// `zoo_onednn_conv_implementation` (plain C, called through ctypes at trace time) says which
// implementation oneDNN picks for a configuration, so Python can keep XLA's convolution where
// oneDNN has only its slow reference kernels or nothing at all (bf16 on a CPU without AVX-512).

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "onednn_common.h"
#include "xla/ffi/api/ffi.h"

namespace {

namespace ffi = xla::ffi;
using dnnl::memory;
using namespace zoo_onednn;

enum Direction : int64_t { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

// Everything a primitive depends on; the layout of the ctypes query's `config` argument.
struct ConvConfig {
  int64_t batch, in_h, in_w, in_c;   // lhs, NHWC
  int64_t kernel_h, kernel_w, out_c;  // rhs, HWIO (I = in_c / groups)
  int64_t out_h, out_w;
  int64_t stride_h, stride_w;
  int64_t pad_top, pad_bottom, pad_left, pad_right;
  int64_t dilation_h, dilation_w;  // XLA's rhs_dilation: 1 is dense
  int64_t groups;
  int64_t precision;
  int64_t num_threads;
};

memory::data_type DataType(const ConvConfig& c) { return zoo_onednn::DataType(c.precision); }

memory::desc InputDesc(const ConvConfig& c) {
  return memory::desc({c.batch, c.in_c, c.in_h, c.in_w}, DataType(c), memory::format_tag::nhwc);
}

memory::desc OutputDesc(const ConvConfig& c) {
  return memory::desc({c.batch, c.out_c, c.out_h, c.out_w}, DataType(c),
                      memory::format_tag::nhwc);
}

memory::dims WeightDims(const ConvConfig& c) {
  const int64_t in_per_group = c.in_c / c.groups;
  if (c.groups == 1) return {c.out_c, in_per_group, c.kernel_h, c.kernel_w};
  return {c.groups, c.out_c / c.groups, in_per_group, c.kernel_h, c.kernel_w};
}

// The HWIO kernel as it lies in XLA's buffer. Grouped weights have no oneDNN format tag for
// this layout ((g, o/g) split out of HWIO's last axis), so their strides are spelled out.
memory::desc UserWeightDesc(const ConvConfig& c) {
  if (c.groups == 1) return memory::desc(WeightDims(c), DataType(c), memory::format_tag::hwio);
  const int64_t in_per_group = c.in_c / c.groups;
  const int64_t out_per_group = c.out_c / c.groups;
  const memory::dims strides = {out_per_group, 1, c.out_c, c.kernel_w * in_per_group * c.out_c,
                                in_per_group * c.out_c};
  return memory::desc(WeightDims(c), DataType(c), strides);
}

memory::desc AnyWeightDesc(const ConvConfig& c) {
  return memory::desc(WeightDims(c), DataType(c), memory::format_tag::any);
}

struct Geometry {
  memory::dims strides, dilates, padding_l, padding_r;
};

Geometry GeometryOf(const ConvConfig& c) {
  return {{c.stride_h, c.stride_w},
          {c.dilation_h - 1, c.dilation_w - 1},
          {c.pad_top, c.pad_left},
          {c.pad_bottom, c.pad_right}};
}

// A reorder between the user's HWIO weights and the primitive's layout (absent when equal).
struct Reorder {
  dnnl::reorder primitive;
  memory::desc scratchpad;
  bool needed = false;
};

Reorder MakeReorder(const memory::desc& from, const memory::desc& to) {
  Reorder r;
  if (from == to) return r;
  auto pd = dnnl::reorder::primitive_desc(Engine(), from, Engine(), to, UserScratchpad());
  r.primitive = dnnl::reorder(pd);
  r.scratchpad = pd.scratchpad_desc();
  r.needed = true;
  return r;
}

struct Plan {
  dnnl::primitive primitive;
  memory::desc scratchpad;
  memory::desc weights;       // the primitive's (diff_)weights layout
  memory::desc user_weights;  // HWIO in XLA's buffer
  Reorder weight_reorder;     // user -> primitive (forward, backward data) or back (weights)
  std::string implementation;
};


std::optional<dnnl::convolution_forward::primitive_desc> ForwardDesc(const ConvConfig& c) {
  const Geometry g = GeometryOf(c);
  auto pd = dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      InputDesc(c), AnyWeightDesc(c), OutputDesc(c), g.strides, g.dilates, g.padding_l,
      g.padding_r, UserScratchpad(), /*allow_empty=*/true);
  if (!pd) return std::nullopt;
  return pd;
}

// Builds the primitive of one direction; nullptr where oneDNN has no implementation.
std::unique_ptr<Plan> MakePlan(Direction direction, const ConvConfig& c) {
  const auto forward = ForwardDesc(c);
  if (!forward) return nullptr;
  auto plan = std::make_unique<Plan>();
  plan->user_weights = UserWeightDesc(c);
  const Geometry g = GeometryOf(c);
  if (direction == kForward) {
    plan->primitive = dnnl::convolution_forward(*forward);
    plan->scratchpad = forward->scratchpad_desc();
    plan->weights = forward->weights_desc();
    plan->implementation = forward->impl_info_str();
    plan->weight_reorder = MakeReorder(plan->user_weights, plan->weights);
  } else if (direction == kBackwardData) {
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, InputDesc(c), AnyWeightDesc(c),
        OutputDesc(c), g.strides, g.dilates, g.padding_l, g.padding_r, *forward,
        UserScratchpad(), /*allow_empty=*/true);
    if (!pd) return nullptr;
    plan->primitive = dnnl::convolution_backward_data(pd);
    plan->scratchpad = pd.scratchpad_desc();
    plan->weights = pd.weights_desc();
    plan->implementation = pd.impl_info_str();
    plan->weight_reorder = MakeReorder(plan->user_weights, plan->weights);
  } else {
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, InputDesc(c), AnyWeightDesc(c),
        OutputDesc(c), g.strides, g.dilates, g.padding_l, g.padding_r, *forward,
        UserScratchpad(), /*allow_empty=*/true);
    if (!pd) return nullptr;
    plan->primitive = dnnl::convolution_backward_weights(pd);
    plan->scratchpad = pd.scratchpad_desc();
    plan->weights = pd.diff_weights_desc();
    plan->implementation = pd.impl_info_str();
    plan->weight_reorder = MakeReorder(plan->weights, plan->user_weights);
  }
  return plan;
}

// The cached plan of a configuration (nullptr, also cached, where oneDNN has none).
const Plan* FindPlan(Direction direction, const ConvConfig& c) {
  return CachedPlan(direction, c, &MakePlan);
}

// Runs `plan` on buffers that hold the activations (`input`, `output`: lhs and out of the
// forward convolution, or their gradients) and the HWIO `weights` (or their gradient).
void Execute(const Plan& plan, const ConvConfig& c, Direction direction, void* input,
             void* output, void* weights) {
  dnnl::engine& engine = Engine();
  dnnl::stream& stream = Stream();
  UseThreads(c.num_threads);
  memory input_mem(InputDesc(c), engine, input);
  memory output_mem(OutputDesc(c), engine, output);
  memory user_weights(plan.user_weights, engine, weights);
  memory kernel_weights =
      plan.weight_reorder.needed ? memory(plan.weights, engine) : user_weights;
  memory scratchpad(plan.scratchpad, engine);
  auto reorder = [&](const memory& from, const memory& to) {
    memory reorder_scratchpad(plan.weight_reorder.scratchpad, engine);
    plan.weight_reorder.primitive.execute(stream, {{DNNL_ARG_FROM, from},
                                                   {DNNL_ARG_TO, to},
                                                   {DNNL_ARG_SCRATCHPAD, reorder_scratchpad}});
  };
  if (direction == kForward) {
    if (plan.weight_reorder.needed) reorder(user_weights, kernel_weights);
    plan.primitive.execute(stream, {{DNNL_ARG_SRC, input_mem},
                                    {DNNL_ARG_WEIGHTS, kernel_weights},
                                    {DNNL_ARG_DST, output_mem},
                                    {DNNL_ARG_SCRATCHPAD, scratchpad}});
  } else if (direction == kBackwardData) {
    if (plan.weight_reorder.needed) reorder(user_weights, kernel_weights);
    plan.primitive.execute(stream, {{DNNL_ARG_DIFF_SRC, input_mem},
                                    {DNNL_ARG_WEIGHTS, kernel_weights},
                                    {DNNL_ARG_DIFF_DST, output_mem},
                                    {DNNL_ARG_SCRATCHPAD, scratchpad}});
  } else {
    plan.primitive.execute(stream, {{DNNL_ARG_SRC, input_mem},
                                    {DNNL_ARG_DIFF_WEIGHTS, kernel_weights},
                                    {DNNL_ARG_DIFF_DST, output_mem},
                                    {DNNL_ARG_SCRATCHPAD, scratchpad}});
    if (plan.weight_reorder.needed) reorder(kernel_weights, user_weights);
  }
  stream.wait();
}

ffi::Error ConfigFrom(ffi::Span<const int64_t> lhs, ffi::Span<const int64_t> rhs,
                      ffi::Span<const int64_t> out, ffi::DataType dtype,
                      ffi::Span<const int64_t> window_strides, ffi::Span<const int64_t> padding,
                      ffi::Span<const int64_t> rhs_dilation, int64_t groups,
                      int64_t num_threads, ConvConfig* c) {
  if (lhs.size() != 4 || rhs.size() != 4 || out.size() != 4 || window_strides.size() != 2 ||
      padding.size() != 4 || rhs_dilation.size() != 2 || groups < 1 || num_threads < 1) {
    return ffi::Error::InvalidArgument("zoo_onednn_conv: expects 2-D NHWC/HWIO operands");
  }
  if (dtype != ffi::DataType::F32 && dtype != ffi::DataType::BF16) {
    return ffi::Error::InvalidArgument("zoo_onednn_conv: expects float32 or bfloat16");
  }
  *c = ConvConfig{lhs[0], lhs[1], lhs[2], lhs[3], rhs[0], rhs[1], rhs[3], out[1], out[2],
                  window_strides[0], window_strides[1], padding[0], padding[1], padding[2],
                  padding[3], rhs_dilation[0], rhs_dilation[1], groups,
                  dtype == ffi::DataType::BF16 ? kBFloat16 : kFloat32, num_threads};
  return ffi::Error::Success();
}

ffi::Error Run(Direction direction, const ConvConfig& c, void* input, void* output,
               void* weights) {
  try {
    const Plan* plan = FindPlan(direction, c);
    if (plan == nullptr) {
      return ffi::Error::InvalidArgument("zoo_onednn_conv: oneDNN has no kernel for this config");
    }
    Execute(*plan, c, direction, input, output, weights);
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("zoo_onednn_conv: oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::AnyBuffer lhs, ffi::AnyBuffer rhs, ffi::Result<ffi::AnyBuffer> out,
                   ffi::Span<const int64_t> window_strides, ffi::Span<const int64_t> padding,
                   ffi::Span<const int64_t> rhs_dilation, int64_t feature_group_count,
                   int64_t num_threads) {
  ConvConfig c;
  ffi::Error error = ConfigFrom(lhs.dimensions(), rhs.dimensions(), out->dimensions(),
                                lhs.element_type(), window_strides, padding, rhs_dilation,
                                feature_group_count, num_threads, &c);
  if (error.failure()) return error;
  return Run(kForward, c, lhs.untyped_data(), out->untyped_data(), rhs.untyped_data());
}

ffi::Error BackwardData(ffi::AnyBuffer d_out, ffi::AnyBuffer rhs,
                        ffi::Result<ffi::AnyBuffer> d_lhs, ffi::Span<const int64_t> window_strides,
                        ffi::Span<const int64_t> padding, ffi::Span<const int64_t> rhs_dilation,
                        int64_t feature_group_count, int64_t num_threads) {
  ConvConfig c;
  ffi::Error error = ConfigFrom(d_lhs->dimensions(), rhs.dimensions(), d_out.dimensions(),
                                d_out.element_type(), window_strides, padding, rhs_dilation,
                                feature_group_count, num_threads, &c);
  if (error.failure()) return error;
  return Run(kBackwardData, c, d_lhs->untyped_data(), d_out.untyped_data(), rhs.untyped_data());
}

ffi::Error BackwardWeights(ffi::AnyBuffer lhs, ffi::AnyBuffer d_out,
                           ffi::Result<ffi::AnyBuffer> d_rhs,
                           ffi::Span<const int64_t> window_strides,
                           ffi::Span<const int64_t> padding,
                           ffi::Span<const int64_t> rhs_dilation, int64_t feature_group_count,
                           int64_t num_threads) {
  ConvConfig c;
  ffi::Error error = ConfigFrom(lhs.dimensions(), d_rhs->dimensions(), d_out.dimensions(),
                                lhs.element_type(), window_strides, padding, rhs_dilation,
                                feature_group_count, num_threads, &c);
  if (error.failure()) return error;
  return Run(kBackwardWeights, c, lhs.untyped_data(), d_out.untyped_data(),
             d_rhs->untyped_data());
}

template <typename Binding>
auto WithConvAttrs(Binding binding) {
  return std::move(binding)
      .template Attr<ffi::Span<const int64_t>>("window_strides")
      .template Attr<ffi::Span<const int64_t>>("padding")
      .template Attr<ffi::Span<const int64_t>>("rhs_dilation")
      .template Attr<int64_t>("feature_group_count")
      .template Attr<int64_t>("num_threads");
}

}  // namespace

ZOO_EXPORT XLA_FFI_Error* zoo_onednn_conv_forward(XLA_FFI_CallFrame* call_frame);
ZOO_EXPORT XLA_FFI_Error* zoo_onednn_conv_backward_data(XLA_FFI_CallFrame* call_frame);
ZOO_EXPORT XLA_FFI_Error* zoo_onednn_conv_backward_weights(XLA_FFI_CallFrame* call_frame);

XLA_FFI_DEFINE_HANDLER_SYMBOL(zoo_onednn_conv_forward, Forward,
                              WithConvAttrs(ffi::Ffi::Bind()
                                                .Arg<ffi::AnyBuffer>()
                                                .Arg<ffi::AnyBuffer>()
                                                .Ret<ffi::AnyBuffer>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(zoo_onednn_conv_backward_data, BackwardData,
                              WithConvAttrs(ffi::Ffi::Bind()
                                                .Arg<ffi::AnyBuffer>()
                                                .Arg<ffi::AnyBuffer>()
                                                .Ret<ffi::AnyBuffer>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(zoo_onednn_conv_backward_weights, BackwardWeights,
                              WithConvAttrs(ffi::Ffi::Bind()
                                                .Arg<ffi::AnyBuffer>()
                                                .Arg<ffi::AnyBuffer>()
                                                .Ret<ffi::AnyBuffer>()));

// Which implementation oneDNN picks for `direction` (0 forward, 1 backward data, 2 backward
// weights) of `config` (the ConvConfig fields in order, `config_size` of them): 1 a real kernel,
// 0 a reference kernel, -1 none. Its name goes to `implementation` (NUL-terminated).
ZOO_EXPORT int zoo_onednn_conv_implementation(int64_t direction, const int64_t* config,
                                              int64_t config_size, char* implementation,
                                              int64_t implementation_size) {
  return QueryImplementation(direction, kBackwardWeights + 1, config, config_size,
                             implementation, implementation_size, &MakePlan);
}

// The number of fields of the query's `config`, so Python can check it agrees.
ZOO_EXPORT int64_t zoo_onednn_conv_config_fields() { return kFields<ConvConfig>; }
