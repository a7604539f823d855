// Max pooling for jax-zoo on NHWC float32 or bfloat16 activations (computed in float32), called
// from XLA:CPU through the XLA FFI.
//
// A square `window` moved by `stride` over the input with `padding` rows and columns of -inf
// before it (and after it, as far as the output size reaches), exactly as XLA's
// `reduce_window(max)` and the select-and-scatter gradient XLA derives for it:
//   zoo_max_pool_forward  (x) -> (y, argmax)
//       y: each window's maximum, NaN where the window holds a NaN; argmax (uint8, y's shape):
//       the position (row-major in the window) select-and-scatter chooses: scanning the window
//       in row-major order, padding included as -inf, the choice moves to each input it is
//       not >= (so the first maximum, where there is no NaN);
//   zoo_max_pool_backward (d_y, argmax) -> d_x
//       each window's gradient sent to that position (dropped where it is padding), an input
//       chosen by several windows receiving their sum, added in row-major window order.
// Each takes the attributes `window`, `stride`, `padding` and `num_threads` (the OpenMP team).
//
// Not oneDNN's max pooling: it skips NaNs (a window of NaNs gives -FLT_MAX, hiding a diverged
// step) and gives -FLT_MAX for a window of -inf.
// Both handlers split rows of the output (forward) or of the input (backward: a gather over
// the windows covering each input, so no two threads write the same element) across the team;
// the innermost loops run over the channels, contiguous in NHWC.

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "kernel_common.h"
#include "xla/ffi/api/ffi.h"

namespace {

namespace ffi = xla::ffi;
using zoo_kernels::BFloat16;
using zoo_kernels::FromFloat;
using zoo_kernels::ToFloat;

// argmax is a byte: windows of up to 16 x 16 positions.
constexpr int64_t kLargestWindow = 16;

struct Pool {
  int64_t batch, height, width, channels, out_height, out_width;
  int64_t window, stride, padding;
};

ffi::Error PoolFrom(ffi::AnyBuffer x, ffi::AnyBuffer y, int64_t window, int64_t stride,
                    int64_t padding, int64_t num_threads, Pool* pool) {
  const auto in = x.dimensions(), out = y.dimensions();
  if (in.size() != 4 || out.size() != 4 || in[0] != out[0] || in[3] != out[3]) {
    return ffi::Error::InvalidArgument("zoo_max_pool: expects NHWC operands");
  }
  if (window < 1 || window > kLargestWindow || stride < 1 || padding < 0 || num_threads < 1) {
    return ffi::Error::InvalidArgument("zoo_max_pool: expects a window of 1 to 16");
  }
  const ffi::DataType dtype = x.element_type();
  if ((dtype != ffi::DataType::F32 && dtype != ffi::DataType::BF16) || y.element_type() != dtype) {
    return ffi::Error::InvalidArgument("zoo_max_pool: expects float32 or bfloat16");
  }
  *pool = Pool{in[0], in[1], in[2], in[3], out[1], out[2], window, stride, padding};
  if (out[1] != (in[1] + 2 * padding - window) / stride + 1 ||
      out[2] != (in[2] + 2 * padding - window) / stride + 1) {
    return ffi::Error::InvalidArgument("zoo_max_pool: output of the wrong size");
  }
  return ffi::Error::Success();
}

// Whether input (h, w) is in the image, not padding.
inline bool Inside(const Pool& p, int64_t h, int64_t w) {
  return h >= 0 && h < p.height && w >= 0 && w < p.width;
}

// The row kernels, one copy per x86-64 level (csrc/max_pool_rows.inc says why), the widest the
// CPU runs picked once: 4, 8 or 16 channels per vector.
namespace baseline {
constexpr int64_t kLanes = 4;
#include "max_pool_rows.inc"
}  // namespace baseline

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
namespace avx2 {
constexpr int64_t kLanes = 8;
#include "max_pool_rows.inc"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
namespace avx512 {
constexpr int64_t kLanes = 16;
#include "max_pool_rows.inc"
}  // namespace avx512
#pragma GCC pop_options

template <typename T>
struct Rows {
  decltype(&baseline::ForwardRow<T>) forward;
  decltype(&baseline::BackwardRow<T>) backward;
};

template <typename T>
const Rows<T>& RowsForThisCpu() {
  static const Rows<T> rows = [] {
    if (__builtin_cpu_supports("x86-64-v4")) {
      return Rows<T>{avx512::ForwardRow<T>, avx512::BackwardRow<T>};
    }
    if (__builtin_cpu_supports("x86-64-v3")) {
      return Rows<T>{avx2::ForwardRow<T>, avx2::BackwardRow<T>};
    }
    return Rows<T>{baseline::ForwardRow<T>, baseline::BackwardRow<T>};
  }();
  return rows;
}

template <typename T>
void ForwardImages(const Pool& p, const void* x, void* y, void* argmax, int64_t num_threads) {
  const Rows<T>& rows = RowsForThisCpu<T>();
  const auto* in = static_cast<const T*>(x);
  auto* out = static_cast<T*>(y);
  auto* at = static_cast<uint8_t*>(argmax);
  const int64_t in_image = p.height * p.width * p.channels;
  const int64_t out_row = p.out_width * p.channels, out_image = p.out_height * out_row;
#pragma omp parallel for collapse(2) schedule(static) num_threads(num_threads)
  for (int64_t n = 0; n < p.batch; ++n) {
    for (int64_t oh = 0; oh < p.out_height; ++oh) {
      const int64_t offset = n * out_image + oh * out_row;
      rows.forward(p, in + n * in_image, oh, out + offset, at + offset);
    }
  }
}

template <typename T>
void BackwardImages(const Pool& p, const void* d_y, const void* argmax, void* d_x,
                    int64_t num_threads) {
  const Rows<T>& rows = RowsForThisCpu<T>();
  const auto* g = static_cast<const T*>(d_y);
  const auto* at = static_cast<const uint8_t*>(argmax);
  auto* out = static_cast<T*>(d_x);
  const int64_t in_row = p.width * p.channels, in_image = p.height * in_row;
  const int64_t out_image = p.out_height * p.out_width * p.channels;
#pragma omp parallel for collapse(2) schedule(static) num_threads(num_threads)
  for (int64_t n = 0; n < p.batch; ++n) {
    for (int64_t h = 0; h < p.height; ++h) {
      rows.backward(p, g + n * out_image, at + n * out_image, h, out + n * in_image + h * in_row);
    }
  }
}

ffi::Error Forward(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y,
                   ffi::Result<ffi::AnyBuffer> argmax, int64_t window, int64_t stride,
                   int64_t padding, int64_t num_threads) {
  Pool p;
  ffi::Error error = PoolFrom(x, *y, window, stride, padding, num_threads, &p);
  if (error.failure()) return error;
  const auto run = x.element_type() == ffi::DataType::BF16 ? ForwardImages<BFloat16>
                                                          : ForwardImages<float>;
  run(p, x.untyped_data(), y->untyped_data(), argmax->untyped_data(), num_threads);
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::AnyBuffer d_y, ffi::AnyBuffer argmax, ffi::Result<ffi::AnyBuffer> d_x,
                    int64_t window, int64_t stride, int64_t padding, int64_t num_threads) {
  Pool p;
  ffi::Error error = PoolFrom(*d_x, d_y, window, stride, padding, num_threads, &p);
  if (error.failure()) return error;
  if (argmax.element_type() != ffi::DataType::U8 || argmax.element_count() != d_y.element_count()) {
    return ffi::Error::InvalidArgument("zoo_max_pool: argmax must be uint8 of d_y's shape");
  }
  const auto run = d_y.element_type() == ffi::DataType::BF16 ? BackwardImages<BFloat16>
                                                            : BackwardImages<float>;
  run(p, d_y.untyped_data(), argmax.untyped_data(), d_x->untyped_data(), num_threads);
  return ffi::Error::Success();
}

}  // namespace

ZOO_EXPORT XLA_FFI_Error* zoo_max_pool_forward(XLA_FFI_CallFrame* call_frame);
ZOO_EXPORT XLA_FFI_Error* zoo_max_pool_backward(XLA_FFI_CallFrame* call_frame);

XLA_FFI_DEFINE_HANDLER_SYMBOL(zoo_max_pool_forward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("window")
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("padding")
                                  .Attr<int64_t>("num_threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(zoo_max_pool_backward, Backward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("window")
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("padding")
                                  .Attr<int64_t>("num_threads"));
