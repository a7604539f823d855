// Winograd F(2x2, 3x3) convolution on bfloat16 for jax-zoo (Lavin & Gray, "Fast Algorithms for
// Convolutional Neural Networks", CVPR 2016), called from XLA:CPU through the XLA FFI:
//   zoo_winograd_bf16_conv3x3 (x, w) -> y      attribute: num_threads (the OpenMP team)
//   y[n, h, w, k] = sum over i, j < 3 and c of x[n, h + i - 1, w + j - 1, c] * w[i, j, c, k]
// on bf16 NHWC activations and HWIO weights: a 3x3 kernel, stride 1, one row and column of
// zeros around the image, channels in multiples of 16 (zoo.ops.conv runs its input gradient as
// the same call on d_y with the kernel turned by 180 degrees, its channels swapped).
//
// Each 2x2 output tile is A^T [U .* (B^T d B)] A, d its 4x4 input patch and U = G w G^T the
// transformed kernel, the elementwise product summed over the input channels: for each of the
// 16 points of a transformed tile a (tiles x C) by (C x K) product, the 16 as one batched
// oneDNN bf16 matmul (float32 sums). 16 multiplications per 4 outputs and channel pair instead
// of 36. The transforms run in float32; the transformed tiles and kernel are rounded to bf16
// for the matmul. B^T only adds and subtracts (each point sums 4 inputs) and G halves, so that
// rounding is of the order of bf16's own: the outputs' error is ~2.5x that of a direct bf16
// convolution, which rounds only its result (bench/README.md); F(4x4, 3x3)'s transforms scale
// by up to 100 and are float32 only (csrc/winograd_conv.cc).
//
// Where the transformed kernel is small (C x K <= 256 x 256) each thread transforms, multiplies
// (on one thread) and transforms back blocks of tiles that stay in its L2; otherwise the whole
// team runs each step on chunks of tiles. Compiled for AVX-512 with AVX512-BF16 only:
// zoo_winograd_bf16_conv3x3_available() says whether this CPU runs it and oneDNN has a real
// bf16 matmul kernel for it.

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "kernel_common.h"
#include "onednn_common.h"
#include "winograd_common.h"
#include "xla/ffi/api/ffi.h"

namespace {

namespace ffi = xla::ffi;
using dnnl::memory;
using zoo_kernels::BFloat16;
using namespace zoo_onednn;
using namespace zoo_winograd;

constexpr int64_t kLanes = 16;   // channels per vector (AVX-512, float32)
constexpr int64_t kPoints = 16;  // a transformed tile: 4 x 4
constexpr int64_t kTile = 2;     // an output tile: 2 x 2
// The largest transformed kernel (C x K) for which threads work on blocks of tiles.
constexpr int64_t kBlockedUpTo = 256 * 256;
// A block's transformed inputs (bf16) and products (float32): most of a core's L2.
constexpr int64_t kBlockBytes = 768 * 1024;
// Tiles per chunk where the whole team runs each step.
constexpr int64_t kChunkRows = 1024;

// The (16, rows, C) bf16 points by the (16, C, K) bf16 kernel's, in the layout oneDNN picks for
// them, into (16, rows, K) float32 products.
std::unique_ptr<WinogradGemm> MakeGemm(int64_t, const GemmConfig& c) {
  auto gemm = std::make_unique<WinogradGemm>();
  gemm->src = memory::desc({kPoints, c.rows, c.in_c}, memory::data_type::bf16,
                           memory::format_tag::abc);
  gemm->dst = memory::desc({kPoints, c.rows, c.out_c}, memory::data_type::f32,
                           memory::format_tag::abc);
  const memory::desc any({kPoints, c.in_c, c.out_c}, memory::data_type::bf16,
                         memory::format_tag::any);
  auto pd = dnnl::matmul::primitive_desc(Engine(), gemm->src, any, gemm->dst, UserScratchpad());
  gemm->primitive = dnnl::matmul(pd);
  gemm->weights = pd.weights_desc();
  gemm->scratchpad = pd.scratchpad_desc();
  gemm->implementation = pd.impl_info_str();
  return gemm;
}

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4,avx512bf16")

typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));

inline Lanes Load(const BFloat16* from) {
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(from));
  return (Lanes)_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16);
}

inline Lanes Load(const float* from) {
  Lanes v;
  std::memcpy(&v, from, sizeof(v));
  return v;
}

// Rounded to nearest even, as oneDNN and XLA round float32 to bf16.
inline void Store(BFloat16* to, const Lanes& v) {
  const __m256bh rounded = _mm512_cvtneps_pbh((__m512)v);
  std::memcpy(to, &rounded, sizeof(rounded));
}

// B^T of four points `step` apart, written `out_step` apart.
inline void InputPoints(const Lanes* d, int step, Lanes* out, int out_step) {
  const Lanes d0 = d[0], d1 = d[step], d2 = d[2 * step], d3 = d[3 * step];
  out[0] = d0 - d2;
  out[out_step] = d1 + d2;
  out[2 * out_step] = d2 - d1;
  out[3 * out_step] = d1 - d3;
}

// A^T of four points `step` apart: two, written `out_step` apart.
inline void OutputPoints(const Lanes* m, int step, Lanes* out, int out_step) {
  const Lanes m0 = m[0], m1 = m[step], m2 = m[2 * step], m3 = m[3 * step];
  out[0] = m0 + m1 + m2;
  out[out_step] = m1 - m2 - m3;
}

// G of three points `step` apart: four, written `out_step` apart.
inline void KernelPoints(const Lanes* g, int step, Lanes* out, int out_step) {
  const Lanes g0 = g[0], g1 = g[step], g2 = g[2 * step];
  const Lanes outer = g0 + g2;
  out[0] = g0;
  out[out_step] = (outer + g1) * 0.5f;
  out[2 * out_step] = (outer - g1) * 0.5f;
  out[3 * out_step] = g2;
}

// u[point][c][k] = (G w[:, :, c, k] G^T)[point] for the HWIO kernel w, rounded to bf16.
void TransformKernel(const WinogradShape& s, const BFloat16* w, BFloat16* u, int64_t num_threads) {
  const int64_t taps = s.in_c * s.out_c;  // between two kernel positions in HWIO
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t c = 0; c < s.in_c; ++c) {
    for (int64_t k = 0; k < s.out_c; k += kLanes) {
      Lanes g[9], half[12], points[kPoints];
      for (int tap = 0; tap < 9; ++tap) g[tap] = Load(w + tap * taps + c * s.out_c + k);
      for (int j = 0; j < 3; ++j) KernelPoints(g + j, 3, half + j, 3);  // 4 x 3
      for (int i = 0; i < 4; ++i) KernelPoints(half + 3 * i, 1, points + 4 * i, 1);
      for (int point = 0; point < kPoints; ++point) {
        Store(u + (point * s.in_c + c) * s.out_c + k, points[point]);
      }
    }
  }
}

// Tile `tile` of x, transformed, as row `row` of the (16, rows, C) points.
void TransformInputTile(const WinogradShape& s, const BFloat16* x, int64_t tile, int64_t row,
                        int64_t rows, BFloat16* points) {
  const TilePlace place = PlaceOf(s, tile);
  const int64_t top = place.top - 1, left = place.left - 1;  // its 4x4 patch, padding included
  const BFloat16* image = x + place.image * s.height * s.width * s.in_c;
  for (int64_t c = 0; c < s.in_c; c += kLanes) {
    Lanes d[kPoints], half[kPoints], v[kPoints];
    for (int i = 0; i < 4; ++i) {
      for (int j = 0; j < 4; ++j) {
        const int64_t h = top + i, w = left + j;
        const bool inside = h >= 0 && h < s.height && w >= 0 && w < s.width;
        d[4 * i + j] = inside ? Load(image + (h * s.width + w) * s.in_c + c) : Lanes{};
      }
    }
    for (int j = 0; j < 4; ++j) InputPoints(d + j, 4, half + j, 4);
    for (int i = 0; i < 4; ++i) InputPoints(half + 4 * i, 1, v + 4 * i, 1);
    for (int point = 0; point < kPoints; ++point) {
      Store(points + (point * rows + row) * s.in_c + c, v[point]);
    }
  }
}

// Row `row` of the (16, rows, K) products, transformed back, as output tile `tile` of y.
void TransformOutputTile(const WinogradShape& s, const float* products, int64_t tile, int64_t row,
                         int64_t rows, BFloat16* y) {
  const auto [n, top, left] = PlaceOf(s, tile);
  BFloat16* image = y + n * s.height * s.width * s.out_c;
  for (int64_t k = 0; k < s.out_c; k += kLanes) {
    Lanes m[kPoints], half[8], out[4];
    for (int point = 0; point < kPoints; ++point) {
      m[point] = Load(products + (point * rows + row) * s.out_c + k);
    }
    for (int j = 0; j < 4; ++j) OutputPoints(m + j, 4, half + j, 4);  // 2 x 4
    for (int i = 0; i < 2; ++i) OutputPoints(half + 4 * i, 1, out + 2 * i, 1);
    for (int i = 0; i < kTile && top + i < s.height; ++i) {
      for (int j = 0; j < kTile && left + j < s.width; ++j) {
        Store(image + ((top + i) * s.width + left + j) * s.out_c + k, out[2 * i + j]);
      }
    }
  }
}

#pragma GCC pop_options

// F(2x2, 3x3) on bf16, for winograd_common.h's Blocked and Chunked.
struct F2x2 {
  static constexpr int64_t kPoints = ::kPoints;
  using In = BFloat16;
  using Point = BFloat16;
  static constexpr auto TransformInputTile = ::TransformInputTile;
  static constexpr auto TransformOutputTile = ::TransformOutputTile;
  static const WinogradGemm& FindGemm(const GemmConfig& c) {
    return *CachedPlan(int64_t{0}, c, &MakeGemm);
  }
};

// The transformed kernel, in the layout the matmul of `gemm` reads.
std::unique_ptr<uint8_t[]> PackedKernel(const WinogradShape& s, const BFloat16* w,
                                        const WinogradGemm& gemm, int64_t num_threads) {
  std::unique_ptr<BFloat16[]> u(new BFloat16[kPoints * s.in_c * s.out_c]);
  TransformKernel(s, w, u.get(), num_threads);
  std::unique_ptr<uint8_t[]> packed(new uint8_t[gemm.weights.get_size()]);
  const memory::desc plain({kPoints, s.in_c, s.out_c}, memory::data_type::bf16,
                           memory::format_tag::abc);
  memory from(plain, Engine(), u.get()), to(gemm.weights, Engine(), packed.get());
  UseThreads(num_threads);
  dnnl::stream& stream = Stream();
  dnnl::reorder(from, to).execute(stream, from, to);
  stream.wait();
  return packed;
}

ffi::Error Conv3x3(ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> w,
                   ffi::ResultBuffer<ffi::BF16> y, int64_t num_threads) {
  WinogradShape s;
  if (!WinogradShapeOf(x.dimensions(), w.dimensions(), y->dimensions(), kTile, &s) ||
      num_threads < 1) {
    return ffi::Error::InvalidArgument(
        "zoo_winograd_bf16_conv3x3: expects NHWC x, a 3x3 HWIO kernel, channels in multiples "
        "of 16");
  }
  if (s.tiles == 0) return ffi::Error::Success();
  const auto* in = reinterpret_cast<const BFloat16*>(x.untyped_data());
  const auto* kernel = reinterpret_cast<const BFloat16*>(w.untyped_data());
  auto* out = reinterpret_cast<BFloat16*>(y->untyped_data());
  try {
    if (s.in_c * s.out_c <= kBlockedUpTo) {
      const int64_t rows = BlockRows<F2x2>(s, num_threads, kBlockBytes, 32);
      const WinogradGemm& gemm = F2x2::FindGemm({rows, s.in_c, s.out_c, 1});
      Blocked<F2x2>(s, in, PackedKernel(s, kernel, gemm, num_threads).get(), out, rows,
                    num_threads);
    } else {
      const int64_t rows = std::min(s.tiles, kChunkRows);
      const WinogradGemm& gemm = F2x2::FindGemm({rows, s.in_c, s.out_c, num_threads});
      Chunked<F2x2>(s, in, PackedKernel(s, kernel, gemm, num_threads).get(), out, rows,
                    num_threads);
    }
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("zoo_winograd_bf16_conv3x3: ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

ZOO_EXPORT XLA_FFI_Error* zoo_winograd_bf16_conv3x3(XLA_FFI_CallFrame* call_frame);

XLA_FFI_DEFINE_HANDLER_SYMBOL(zoo_winograd_bf16_conv3x3, Conv3x3,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::BF16>>()
                                  .Attr<int64_t>("num_threads"));

// 1 where this CPU runs the transforms (AVX-512 with AVX512-BF16) and oneDNN a real bf16 matmul
// kernel for the products, else 0.
ZOO_EXPORT int zoo_winograd_bf16_conv3x3_available() {
  if (!__builtin_cpu_supports("x86-64-v4") || !__builtin_cpu_supports("avx512bf16")) return 0;
  try {
    return IsReference(F2x2::FindGemm({32, kLanes, kLanes, 1}).implementation) ? 0 : 1;
  } catch (const dnnl::error&) {
    return 0;
  }
}
