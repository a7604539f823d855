// Winograd F(4x4, 3x3) convolution for jax-zoo (Lavin & Gray, "Fast Algorithms for
// Convolutional Neural Networks", CVPR 2016), called from XLA:CPU through the XLA FFI:
//   zoo_winograd_conv3x3         (x, w) -> y      attribute: num_threads (the OpenMP team)
//   y[n, h, w, k] = sum over i, j < 3 and c of x[n, h + i - 1, w + j - 1, c] * w[i, j, c, k]
//   zoo_winograd_conv3x3_weights (x, d_y) -> d_w  its weight gradient: the transpose of the
//   same transforms in w, G^T [sum over tiles of (B^T d B) .* (A d_y A^T)] G, the sums over
//   the tiles as the same batched matmul, chunk by chunk (its input gradient is the forward
//   convolution of d_y with w turned by 180 degrees, its channels swapped)
// on float32 NHWC activations and HWIO weights: a 3x3 kernel, stride 1, one row and column of
// zeros around the image, channels in multiples of 16. Each 4x4 tile of the output is
// A^T [U .* (B^T d B)] A, d its 6x6 input patch and U = G w G^T the transformed kernel, the
// elementwise product summed over the input channels: for each of the 36 points of a
// transformed tile, a product of the tiles' points (tiles x C) by the kernel's (C x K), all 36
// as one batched oneDNN matmul. 36 multiplications per 16 outputs and input channel instead of
// 144; the transforms add and scale by 1/4 ... 8, so the rounding error is ~5-10x a direct
// convolution's (bench/README.md), which is why zoo.ops.conv runs this only where the caller
// did not ask for float32 precision throughout.
//
// Where the transformed kernel is small (C x K <= 256 x 256) each thread of the convolution
// runs all three steps on blocks of tiles that stay in its cache, the matmul on one thread;
// otherwise, and for the weight gradient, the whole team runs each step on chunks of 512 tiles.
// A NaN or an infinity among the inputs spreads over the 4x4 output tiles whose patches hold it
// (an infinity as NaN: the transforms subtract), where a direct convolution's stays within 3x3.
// The transforms are compiled for AVX-512 only: zoo_winograd_conv3x3_available() says whether
// this CPU runs them and oneDNN has a real float32 matmul kernel for it.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "onednn_common.h"
#include "winograd_common.h"
#include "xla/ffi/api/ffi.h"

namespace {

namespace ffi = xla::ffi;
using dnnl::memory;
using namespace zoo_onednn;
using namespace zoo_winograd;

constexpr int64_t kLanes = 16;    // channels per vector (AVX-512)
constexpr int64_t kPoints = 36;   // a transformed tile: 6 x 6
constexpr int64_t kTile = 4;      // an output tile: 4 x 4
// The largest transformed kernel (C x K floats) for which threads work on blocks of tiles.
constexpr int64_t kBlockedUpTo = 256 * 256;
// A block's transformed inputs and products: about a core's L2.
constexpr int64_t kBlockBytes = 700 * 1024;
// Tiles per chunk where the whole team runs each step: bounds the points and the products
// (38 MB each at 512 channels).
constexpr int64_t kChunkRows = 512;

// The products of a convolution (kProducts: (36, rows, C) tiles' points by (36, C, K) kernel's)
// or of its weight gradient (the (36, rows, C) input points, transposed, by the (36, rows, K)
// output-gradient points: (36, C, K) kernel's points summed over the tiles), assigned
// (kKernelPoints) or added to (kMoreKernelPoints). All row-major.
enum GemmKind : int64_t { kProducts = 0, kKernelPoints = 1, kMoreKernelPoints = 2 };

std::unique_ptr<WinogradGemm> MakeGemm(int64_t kind, const GemmConfig& c) {
  auto desc = [](int64_t rows, int64_t cols) {
    return memory::desc({kPoints, rows, cols}, memory::data_type::f32, memory::format_tag::abc);
  };
  auto gemm = std::make_unique<WinogradGemm>();
  dnnl::primitive_attr attr = UserScratchpad();
  if (kind == kProducts) {
    gemm->src = desc(c.rows, c.in_c);
    gemm->weights = desc(c.in_c, c.out_c);
    gemm->dst = desc(c.rows, c.out_c);
  } else {  // the (36, rows, C) points read as (36, C, rows)
    gemm->src = memory::desc({kPoints, c.in_c, c.rows}, memory::data_type::f32,
                             memory::dims{c.rows * c.in_c, 1, c.in_c});
    gemm->weights = desc(c.rows, c.out_c);
    gemm->dst = desc(c.in_c, c.out_c);
    if (kind == kMoreKernelPoints) {
      dnnl::post_ops sum;
      sum.append_sum();
      attr.set_post_ops(sum);
    }
  }
  auto pd = dnnl::matmul::primitive_desc(Engine(), gemm->src, gemm->weights, gemm->dst, attr);
  gemm->primitive = dnnl::matmul(pd);
  gemm->scratchpad = pd.scratchpad_desc();
  gemm->implementation = pd.impl_info_str();
  return gemm;
}

const WinogradGemm& FindGemm(const GemmConfig& c, GemmKind kind = kProducts) {
  return *CachedPlan(int64_t{kind}, c, &MakeGemm);
}

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")

typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));

inline Lanes Load(const float* from) {
  Lanes v;
  std::memcpy(&v, from, sizeof(v));
  return v;
}

inline void Store(float* to, const Lanes& v) { std::memcpy(to, &v, sizeof(v)); }

// B^T of six points `step` apart, written `out_step` apart.
inline void InputPoints(const Lanes* d, int step, Lanes* out, int out_step) {
  const Lanes d0 = d[0], d1 = d[step], d2 = d[2 * step], d3 = d[3 * step], d4 = d[4 * step],
              d5 = d[5 * step];
  out[0] = 4 * d0 - 5 * d2 + d4;
  out[out_step] = d3 + d4 - 4 * (d1 + d2);
  out[2 * out_step] = d4 - d3 + 4 * (d1 - d2);
  out[3 * out_step] = d4 - d2 - 2 * (d1 - d3);
  out[4 * out_step] = d4 - d2 + 2 * (d1 - d3);
  out[5 * out_step] = 4 * d1 - 5 * d3 + d5;
}

// A^T of six points `step` apart: four, written `out_step` apart.
inline void OutputPoints(const Lanes* m, int step, Lanes* out, int out_step) {
  const Lanes m0 = m[0], m1 = m[step], m2 = m[2 * step], m3 = m[3 * step], m4 = m[4 * step],
              m5 = m[5 * step];
  const Lanes sum12 = m1 + m2, diff12 = m1 - m2, sum34 = m3 + m4, diff34 = m3 - m4;
  out[0] = m0 + sum12 + sum34;
  out[out_step] = diff12 + 2 * diff34;
  out[2 * out_step] = sum12 + 4 * sum34;
  out[3 * out_step] = diff12 + 8 * diff34 + m5;
}

// G of three points `step` apart: six, written `out_step` apart.
inline void KernelPoints(const Lanes* g, int step, Lanes* out, int out_step) {
  const Lanes g0 = g[0], g1 = g[step], g2 = g[2 * step];
  const Lanes outer = g0 + g2;
  out[0] = g0 * (1.0f / 4);
  out[out_step] = (outer + g1) * (-1.0f / 6);
  out[2 * out_step] = (outer - g1) * (-1.0f / 6);
  out[3 * out_step] = g0 * (1.0f / 24) + g1 * (1.0f / 12) + g2 * (1.0f / 6);
  out[4 * out_step] = g0 * (1.0f / 24) - g1 * (1.0f / 12) + g2 * (1.0f / 6);
  out[5 * out_step] = g2;
}

// A of four points `step` apart: six, written `out_step` apart (the transpose of A^T).
inline void OutputGradientPoints(const Lanes* g, int step, Lanes* out, int out_step) {
  const Lanes g0 = g[0], g1 = g[step], g2 = g[2 * step], g3 = g[3 * step];
  const Lanes even = g0 + g2, odd = g1 + g3, even4 = g0 + 4 * g2, odd4 = 2 * g1 + 8 * g3;
  out[0] = g0;
  out[out_step] = even + odd;
  out[2 * out_step] = even - odd;
  out[3 * out_step] = even4 + odd4;
  out[4 * out_step] = even4 - odd4;
  out[5 * out_step] = g3;
}

// G^T of six points `step` apart: three, written `out_step` apart (the transpose of G).
inline void KernelGradientPoints(const Lanes* u, int step, Lanes* out, int out_step) {
  const Lanes u0 = u[0], u1 = u[step], u2 = u[2 * step], u3 = u[3 * step], u4 = u[4 * step],
              u5 = u[5 * step];
  const Lanes sum12 = u1 + u2, sum34 = u3 + u4;
  out[0] = u0 * (1.0f / 4) - sum12 * (1.0f / 6) + sum34 * (1.0f / 24);
  out[out_step] = (u2 - u1) * (1.0f / 6) + (u3 - u4) * (1.0f / 12);
  out[2 * out_step] = (sum34 - sum12) * (1.0f / 6) + u5;
}

// u[point][c][k] = (G w[:, :, c, k] G^T)[point] for the HWIO kernel w.
void TransformKernel(const WinogradShape& s, const float* w, float* u, int64_t num_threads) {
  const int64_t taps = s.in_c * s.out_c;  // between two kernel positions in HWIO
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t c = 0; c < s.in_c; ++c) {
    for (int64_t k = 0; k < s.out_c; k += kLanes) {
      Lanes g[9], half[18], points[kPoints];
      for (int tap = 0; tap < 9; ++tap) g[tap] = Load(w + tap * taps + c * s.out_c + k);
      for (int j = 0; j < 3; ++j) KernelPoints(g + j, 3, half + j, 3);  // 6 x 3
      for (int i = 0; i < 6; ++i) KernelPoints(half + 3 * i, 1, points + 6 * i, 1);
      for (int point = 0; point < kPoints; ++point) {
        Store(u + (point * s.in_c + c) * s.out_c + k, points[point]);
      }
    }
  }
}

// Tile `tile` of x, transformed, as row `row` of the (36, rows, C) points.
void TransformInputTile(const WinogradShape& s, const float* x, int64_t tile, int64_t row,
                        int64_t rows, float* points) {
  const TilePlace place = PlaceOf(s, tile);
  const int64_t top = place.top - 1, left = place.left - 1;  // its 6x6 patch, padding included
  const float* image = x + place.image * s.height * s.width * s.in_c;
  for (int64_t c = 0; c < s.in_c; c += kLanes) {
    Lanes d[kPoints], half[kPoints], v[kPoints];
    for (int i = 0; i < 6; ++i) {
      for (int j = 0; j < 6; ++j) {
        const int64_t h = top + i, w = left + j;
        const bool inside = h >= 0 && h < s.height && w >= 0 && w < s.width;
        d[6 * i + j] = inside ? Load(image + (h * s.width + w) * s.in_c + c) : Lanes{};
      }
    }
    for (int j = 0; j < 6; ++j) InputPoints(d + j, 6, half + j, 6);
    for (int i = 0; i < 6; ++i) InputPoints(half + 6 * i, 1, v + 6 * i, 1);
    for (int point = 0; point < kPoints; ++point) {
      Store(points + (point * rows + row) * s.in_c + c, v[point]);
    }
  }
}

// Output tile `tile` of the gradient d_y, zero outside the image, transformed (A d_y A^T) as
// row `row` of the (36, rows, K) points.
void TransformOutputGradientTile(const WinogradShape& s, const float* d_y, int64_t tile,
                                 int64_t row, int64_t rows, float* points) {
  const auto [n, top, left] = PlaceOf(s, tile);
  const float* image = d_y + n * s.height * s.width * s.out_c;
  for (int64_t k = 0; k < s.out_c; k += kLanes) {
    Lanes g[16], half[24], v[kPoints];
    for (int i = 0; i < kTile; ++i) {
      for (int j = 0; j < kTile; ++j) {
        const int64_t h = top + i, w = left + j;
        g[4 * i + j] = h < s.height && w < s.width
                           ? Load(image + (h * s.width + w) * s.out_c + k)
                           : Lanes{};
      }
    }
    for (int j = 0; j < 4; ++j) OutputGradientPoints(g + j, 4, half + j, 4);  // 6 x 4
    for (int i = 0; i < 6; ++i) OutputGradientPoints(half + 4 * i, 1, v + 6 * i, 1);
    for (int point = 0; point < kPoints; ++point) {
      Store(points + (point * rows + row) * s.out_c + k, v[point]);
    }
  }
}

// The HWIO kernel gradient d_w from the kernel's points d_u[point][c][k]: G^T d_u G.
void TransformKernelGradient(const WinogradShape& s, const float* d_u, float* d_w,
                             int64_t num_threads) {
  const int64_t taps = s.in_c * s.out_c;
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t c = 0; c < s.in_c; ++c) {
    for (int64_t k = 0; k < s.out_c; k += kLanes) {
      Lanes u[kPoints], half[18], g[9];
      for (int point = 0; point < kPoints; ++point) {
        u[point] = Load(d_u + (point * s.in_c + c) * s.out_c + k);
      }
      for (int j = 0; j < 6; ++j) KernelGradientPoints(u + j, 6, half + j, 6);  // 3 x 6
      for (int i = 0; i < 3; ++i) KernelGradientPoints(half + 6 * i, 1, g + 3 * i, 1);
      for (int tap = 0; tap < 9; ++tap) Store(d_w + tap * taps + c * s.out_c + k, g[tap]);
    }
  }
}

// Row `row` of the (36, rows, K) products, transformed back, as output tile `tile` of y.
void TransformOutputTile(const WinogradShape& s, const float* products, int64_t tile, int64_t row,
                         int64_t rows, float* y) {
  const auto [n, top, left] = PlaceOf(s, tile);
  float* image = y + n * s.height * s.width * s.out_c;
  for (int64_t k = 0; k < s.out_c; k += kLanes) {
    Lanes m[kPoints], half[24], out[16];
    for (int point = 0; point < kPoints; ++point) {
      m[point] = Load(products + (point * rows + row) * s.out_c + k);
    }
    for (int j = 0; j < 6; ++j) OutputPoints(m + j, 6, half + j, 6);  // 4 x 6
    for (int i = 0; i < 4; ++i) OutputPoints(half + 6 * i, 1, out + 4 * i, 1);
    for (int i = 0; i < kTile && top + i < s.height; ++i) {
      for (int j = 0; j < kTile && left + j < s.width; ++j) {
        Store(image + ((top + i) * s.width + left + j) * s.out_c + k, out[4 * i + j]);
      }
    }
  }
}

#pragma GCC pop_options

// F(4x4, 3x3) on float32, for winograd_common.h's Blocked and Chunked.
struct F4x4 {
  static constexpr int64_t kPoints = ::kPoints;
  using In = float;
  using Point = float;
  static constexpr auto TransformInputTile = ::TransformInputTile;
  static constexpr auto TransformOutputTile = ::TransformOutputTile;
  static const WinogradGemm& FindGemm(const GemmConfig& c) { return ::FindGemm(c); }
};

// The kernel's points of the weight gradient, summed over chunks of tiles on the whole team.
void SumKernelGradientPoints(const WinogradShape& s, const float* x, const float* d_y, float* d_u,
                             int64_t num_threads) {
  const int64_t rows = std::min(s.tiles, kChunkRows);
  std::unique_ptr<float[]> points(new float[kPoints * rows * s.in_c]);
  std::unique_ptr<float[]> gradients(new float[kPoints * rows * s.out_c]);
  const GemmConfig config{rows, s.in_c, s.out_c, num_threads};
  GemmCall first(FindGemm(config, kKernelPoints), points.get(), gradients.get(), d_u);
  GemmCall more(FindGemm(config, kMoreKernelPoints), points.get(), gradients.get(), d_u);
  for (int64_t start = 0; start < s.tiles; start += rows) {
    const int64_t count = std::min(rows, s.tiles - start);
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int64_t row = 0; row < count; ++row) {
      TransformInputTile(s, x, start + row, row, rows, points.get());
      TransformOutputGradientTile(s, d_y, start + row, row, rows, gradients.get());
    }
    ZeroRows(kPoints, count, rows, s.in_c, points.get());
    ZeroRows(kPoints, count, rows, s.out_c, gradients.get());
    UseThreads(num_threads);
    (start == 0 ? first : more).Run();
  }
}

ffi::Error Conv3x3(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   ffi::ResultBuffer<ffi::F32> y, int64_t num_threads) {
  WinogradShape s;
  if (!WinogradShapeOf(x.dimensions(), w.dimensions(), y->dimensions(), kTile, &s) ||
      num_threads < 1) {
    return ffi::Error::InvalidArgument(
        "zoo_winograd_conv3x3: expects NHWC x, a 3x3 HWIO kernel, channels in multiples of 16");
  }
  if (s.tiles == 0) return ffi::Error::Success();
  try {
    std::unique_ptr<float[]> u(new float[kPoints * s.in_c * s.out_c]);
    TransformKernel(s, w.typed_data(), u.get(), num_threads);
    if (s.in_c * s.out_c <= kBlockedUpTo) {
      const int64_t rows = BlockRows<F4x4>(s, num_threads, kBlockBytes, 16);
      Blocked<F4x4>(s, x.typed_data(), u.get(), y->typed_data(), rows, num_threads);
    } else {
      const int64_t rows = std::min(s.tiles, kChunkRows);
      Chunked<F4x4>(s, x.typed_data(), u.get(), y->typed_data(), rows, num_threads);
    }
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("zoo_winograd_conv3x3: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Conv3x3Weights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> d_y,
                          ffi::ResultBuffer<ffi::F32> d_w, int64_t num_threads) {
  WinogradShape s;
  if (!WinogradShapeOf(x.dimensions(), d_w->dimensions(), d_y.dimensions(), kTile, &s) ||
      num_threads < 1) {
    return ffi::Error::InvalidArgument(
        "zoo_winograd_conv3x3_weights: expects NHWC x and d_y, channels in multiples of 16");
  }
  if (s.tiles == 0) {
    std::fill_n(d_w->typed_data(), 9 * s.in_c * s.out_c, 0.0f);
    return ffi::Error::Success();
  }
  try {
    std::unique_ptr<float[]> d_u(new float[kPoints * s.in_c * s.out_c]);
    SumKernelGradientPoints(s, x.typed_data(), d_y.typed_data(), d_u.get(), num_threads);
    TransformKernelGradient(s, d_u.get(), d_w->typed_data(), num_threads);
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("zoo_winograd_conv3x3_weights: ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

ZOO_EXPORT XLA_FFI_Error* zoo_winograd_conv3x3(XLA_FFI_CallFrame* call_frame);
ZOO_EXPORT XLA_FFI_Error* zoo_winograd_conv3x3_weights(XLA_FFI_CallFrame* call_frame);

XLA_FFI_DEFINE_HANDLER_SYMBOL(zoo_winograd_conv3x3, Conv3x3,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("num_threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(zoo_winograd_conv3x3_weights, Conv3x3Weights,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("num_threads"));

// 1 where this CPU runs the transforms (AVX-512) and oneDNN a real float32 matmul kernel for
// the products, else 0.
ZOO_EXPORT int zoo_winograd_conv3x3_available() {
  if (!__builtin_cpu_supports("x86-64-v4")) return 0;
  try {
    return IsReference(FindGemm({16, kLanes, kLanes, 1}).implementation) ? 0 : 1;
  } catch (const dnnl::error&) {
    return 0;
  }
}
