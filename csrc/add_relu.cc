// The join of a residual block, relu(x + shortcut), for jax-zoo on float32 or bfloat16 arrays
// of any shape (computed in float32), called from XLA:CPU through the XLA FFI:
//   zoo_add_relu_forward  (x, shortcut) -> y    y = max(x + shortcut, 0), the sum rounded to
//       the arrays' dtype once, NaN where the sum is NaN (`lax.max` propagates NaN);
//   zoo_add_relu_backward (y, d_y) -> d         d = d_y where y > 0, else +0: the gradient of
//       both operands (JAX's relu gradient, `select(x > 0, g, 0)`, with y for x: the same sign).
// Each takes the attribute `num_threads` (the OpenMP team).
//
// Bit for bit what XLA:CPU computes for `nn.relu(x + shortcut)` and its gradient, subnormals
// included (XLA runs with subnormal inputs read as zero and subnormal results flushed to zero,
// so the forward kernel sets the same MXCSR mode on each of its threads), except that a NaN
// sum stays NaN: XLA:CPU's YNNPACK fusions give 0 there for arrays of 4,096 elements or more.
// Why a kernel: XLA:CPU computes bf16 elementwise ops in float32 and, split across its fusions
// (YNNPACK's take no select), writes the sum, its mask and the masked gradient as float32
// arrays, and materialises the zeros the select reads (bench/README.md).

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "kernel_common.h"
#include "xla/ffi/api/ffi.h"

namespace {

namespace ffi = xla::ffi;
using zoo_kernels::BFloat16;
using zoo_kernels::FromFloat;
using zoo_kernels::Relu;
using zoo_kernels::ToFloat;

// Elements per task: large enough to amortise the team's start, small enough to balance.
constexpr int64_t kChunk = 1 << 16;

// XLA:CPU's floating-point mode (subnormals flushed to zero, and read as zero: MXCSR's FTZ
// and DAZ bits) on this thread while the object lives. OpenMP's threads need not have it.
class FlushSubnormals {
#if defined(__x86_64__)
 public:
  FlushSubnormals() : saved_(_mm_getcsr()) {
    _mm_setcsr(saved_ | kFlushToZero | kDenormalsAreZero);
  }
  ~FlushSubnormals() { _mm_setcsr(saved_); }

 private:
  static constexpr unsigned int kFlushToZero = 0x8000, kDenormalsAreZero = 0x0040;
  unsigned int saved_;
#endif
};

template <typename T>
inline void ForwardSpan(const T* x, const T* shortcut, T* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    y[i] = Relu(FromFloat<T>(ToFloat(x[i]) + ToFloat(shortcut[i])));
  }
}

// y > 0 on y's bits, as XLA compares with subnormals read as zero: a positive normal number
// or +inf (the largest bits below NaN's).
inline bool Positive(float y) {
  uint32_t bits;
  std::memcpy(&bits, &y, sizeof(bits));
  return bits - 0x00800000u <= 0x7f800000u - 0x00800000u;
}

inline bool Positive(BFloat16 y) {
  return static_cast<uint16_t>(y - 0x0080u) <= 0x7f80u - 0x0080u;
}

template <typename T>
inline void BackwardSpan(const T* y, const T* d_y, T* d, int64_t n) {
  for (int64_t i = 0; i < n; ++i) d[i] = Positive(y[i]) ? d_y[i] : T{};
}

// The spans compiled for each x86-64 level, the widest the CPU runs picked at load time (the
// loops are plain C++: GCC vectorises each clone for its own ISA).
#define ZOO_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

ZOO_CLONES void ForwardFloat(const float* x, const float* s, float* y, int64_t n) {
  ForwardSpan(x, s, y, n);
}
ZOO_CLONES void ForwardBFloat16(const BFloat16* x, const BFloat16* s, BFloat16* y, int64_t n) {
  ForwardSpan(x, s, y, n);
}
ZOO_CLONES void BackwardFloat(const float* y, const float* d_y, float* d, int64_t n) {
  BackwardSpan(y, d_y, d, n);
}
ZOO_CLONES void BackwardBFloat16(const BFloat16* y, const BFloat16* d_y, BFloat16* d,
                                 int64_t n) {
  BackwardSpan(y, d_y, d, n);
}

#undef ZOO_CLONES

// `span(a + i, b + i, out + i, n)` over [0, size) in chunks, on a team of `num_threads`, in
// XLA:CPU's floating-point mode where `flush` (the backward pass only compares bits).
template <typename T, typename Span>
void InChunks(Span span, const void* a, const void* b, void* out, int64_t size,
              int64_t num_threads, bool flush) {
  const auto* first = static_cast<const T*>(a);
  const auto* second = static_cast<const T*>(b);
  auto* result = static_cast<T*>(out);
  const int64_t chunks = (size + kChunk - 1) / kChunk;
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min(num_threads, chunks)));
#pragma omp parallel num_threads(threads)
  {
    std::optional<FlushSubnormals> mode;
    if (flush) mode.emplace();
#pragma omp for schedule(static)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t begin = c * kChunk, n = std::min(kChunk, size - begin);
      span(first + begin, second + begin, result + begin, n);
    }
  }
}

ffi::Error Check(ffi::AnyBuffer a, ffi::AnyBuffer b, const ffi::AnyBuffer& out,
                 int64_t num_threads) {
  const ffi::DataType dtype = a.element_type();
  if ((dtype != ffi::DataType::F32 && dtype != ffi::DataType::BF16) ||
      b.element_type() != dtype || out.element_type() != dtype) {
    return ffi::Error::InvalidArgument("zoo_add_relu: expects float32 or bfloat16 operands");
  }
  if (b.element_count() != a.element_count() || out.element_count() != a.element_count() ||
      num_threads < 1) {
    return ffi::Error::InvalidArgument("zoo_add_relu: expects operands of one shape");
  }
  return ffi::Error::Success();
}

// `a` and `b` to `out` through `float_span` or `bf16_span` (by their dtype), checked first.
template <typename FloatSpan, typename BFloat16Span>
ffi::Error Run(FloatSpan float_span, BFloat16Span bf16_span, bool flush, ffi::AnyBuffer a,
               ffi::AnyBuffer b, ffi::AnyBuffer& out, int64_t num_threads) {
  ffi::Error error = Check(a, b, out, num_threads);
  if (error.failure()) return error;
  const int64_t size = static_cast<int64_t>(a.element_count());
  if (a.element_type() == ffi::DataType::BF16) {
    InChunks<BFloat16>(bf16_span, a.untyped_data(), b.untyped_data(), out.untyped_data(), size,
                       num_threads, flush);
  } else {
    InChunks<float>(float_span, a.untyped_data(), b.untyped_data(), out.untyped_data(), size,
                    num_threads, flush);
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::AnyBuffer x, ffi::AnyBuffer shortcut, ffi::Result<ffi::AnyBuffer> y,
                   int64_t num_threads) {
  return Run(ForwardFloat, ForwardBFloat16, /*flush=*/true, x, shortcut, *y, num_threads);
}

ffi::Error Backward(ffi::AnyBuffer y, ffi::AnyBuffer d_y, ffi::Result<ffi::AnyBuffer> d,
                    int64_t num_threads) {
  return Run(BackwardFloat, BackwardBFloat16, /*flush=*/false, y, d_y, *d, num_threads);
}

}  // namespace

ZOO_EXPORT XLA_FFI_Error* zoo_add_relu_forward(XLA_FFI_CallFrame* call_frame);
ZOO_EXPORT XLA_FFI_Error* zoo_add_relu_backward(XLA_FFI_CallFrame* call_frame);

XLA_FFI_DEFINE_HANDLER_SYMBOL(zoo_add_relu_forward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("num_threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(zoo_add_relu_backward, Backward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("num_threads"));
