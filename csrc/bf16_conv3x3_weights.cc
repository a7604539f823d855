// The weight gradient of a bfloat16 3x3 convolution for jax-zoo, called from XLA:CPU through
// the XLA FFI:
//   zoo_bf16_conv3x3_weights (x, d_y) -> d_w    attributes: stride, num_threads (OpenMP team)
//   d_w[i, j, c, k] = sum over n, h, w of x[n, s h + i - 1, s w + j - 1, c] * d_y[n, h, w, k]
// on bf16 NHWC activations, the HWIO result in bf16 (float32 sums, rounded once, as oneDNN's
// bf16 kernels round): a 3x3 kernel, stride s of 1 or 2, one row and column of zeros around
// the image, channels in multiples of 16. Without AMX, oneDNN 3.2's kernel for it (jit_bf16)
// runs further from AVX512-BF16's peak than its forward and backward-data kernels; this one
// comes closer (bench/README.md, "bf16 weight gradient").
//
// Each tap d_w[i, j] is a (C x K) matrix product summed over the positions. VDPBF16PS multiplies
// pairs of bf16 along the summed dimension, so the positions are paired across images: the pair
// of a batch pair (2p, 2p + 1) at one position, which no shift of a tap separates (pairs along
// a row would need a second copy of the inputs for the odd shifts). The inputs are interleaved
// into [pair][row][column][C][2] with the zero rows and columns around each image written out,
// the output gradients into [K block][pair][row][column][K block's channels][2]; a tile of
// 4 x 64, 8 x 32 or 16 x 16 (input x output channels) keeps its sums in registers over a chunk
// of positions whose gradients stay in L1, each input pair broadcast from memory.
//
// Two ways to share the work between threads: where d_w's float32 sums are small (C x K up to
// 64 x 128), each thread sums bands of images and rows that fit its L2 into sums of its own,
// added up at the end; otherwise the team interleaves chunks of pairs together and each thread
// sums its own taps and output channels over them. Compiled for AVX-512 with AVX512-BF16 only:
// zoo_bf16_conv3x3_weights_available() says whether this CPU runs it.

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "kernel_common.h"
#include "xla/ffi/api/ffi.h"

namespace {

namespace ffi = xla::ffi;
using zoo_kernels::BFloat16;

constexpr int64_t kTaps = 9;
constexpr int64_t kLanes = 16;  // float32 sums per vector: output channels
// A tile's sums: 16 vectors of registers, enough products in flight to keep both FMA pipes busy.
constexpr int kTileVectors = 16;
// A band's interleaved inputs and gradients, on each thread's own sums: about half a core's L2.
constexpr int64_t kBandBytes = 512 * 1024;
// The largest float32 sums (C x K) for which each thread keeps sums of its own.
constexpr int64_t kOwnSumsUpTo = 64 * 128;
// A chunk's interleaved inputs and gradients, where the team shares the sums: part of the L3.
constexpr int64_t kChunkBytes = 8 * 1024 * 1024;
// Positions per pass of a tile: their gradients (up to 256 bytes each) stay in L1.
constexpr int64_t kPassPositions = 128;

struct Shape {
  int64_t batch, in_h, in_w, in_c, out_h, out_w, out_c, stride;
  int64_t Pairs() const { return (batch + 1) / 2; }
  // Output channels per block of gradients: 64, 32 or 16, the widest that divides K.
  int64_t Block() const { return out_c % 64 == 0 ? 64 : out_c % 32 == 0 ? 32 : 16; }
  // Interleaved elements of an input row, the zero columns around it included.
  int64_t InputRow() const { return (in_w + 2) * in_c * 2; }
  // Interleaved bytes of a pair's output row: its gradients and the input rows it reads.
  int64_t RowBytes() const { return (stride * InputRow() + out_w * out_c * 2) * 2; }
  // Interleaved bytes of a pair's whole images.
  int64_t PairBytes() const { return out_h * RowBytes() + (3 - stride) * InputRow() * 2; }
};

// Pairs [first_pair, first_pair + pairs) of images, output rows [first_row, first_row + rows).
struct Band {
  int64_t first_pair, pairs, first_row, rows;
  // The input rows it reads: first_row * stride - 1 on, the zero row above the image included.
  int64_t InputRows(const Shape& s) const { return s.stride * (rows - 1) + 3; }
};

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4,avx512bf16")

// out[2c] = a[c], out[2c + 1] = b[c] for 16 channels; a null row reads as zeros.
inline void Interleave16(const BFloat16* a, const BFloat16* b, BFloat16* out) {
  alignas(64) static const uint16_t kOrder[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,
                                                  21, 6, 22, 7, 23, 8,  24, 9,  25, 10, 26,
                                                  11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m256i low = a ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a))
                        : _mm256_setzero_si256();
  const __m256i high = b ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b))
                         : _mm256_setzero_si256();
  const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
  _mm512_storeu_si512(out, _mm512_permutexvar_epi16(_mm512_load_si512(kOrder), both));
}

// Row `h`, column `w` of image `n` (channels `channels`), or null outside the image or batch.
inline const BFloat16* At(const BFloat16* data, int64_t batch, int64_t height, int64_t width,
                          int64_t channels, int64_t n, int64_t h, int64_t w) {
  if (n >= batch || h < 0 || h >= height || w < 0 || w >= width) return nullptr;
  return data + ((n * height + h) * width + w) * channels;
}

// The band's inputs as [pair][input rows][in_w + 2][C][2] (columns -1 ... in_w) for `pair` of
// its pairs.
void InterleaveInputs(const Shape& s, const Band& band, int64_t pair, const BFloat16* x,
                      BFloat16* out) {
  const int64_t n = 2 * (band.first_pair + pair), rows = band.InputRows(s);
  out += pair * rows * s.InputRow();
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t h = band.first_row * s.stride + r - 1;
    for (int64_t col = 0; col < s.in_w + 2; ++col) {
      const BFloat16* a = At(x, s.batch, s.in_h, s.in_w, s.in_c, n, h, col - 1);
      const BFloat16* b = At(x, s.batch, s.in_h, s.in_w, s.in_c, n + 1, h, col - 1);
      for (int64_t c = 0; c < s.in_c; c += kLanes) {
        Interleave16(a ? a + c : nullptr, b ? b + c : nullptr, out + c * 2);
      }
      out += s.in_c * 2;
    }
  }
}

// The band's output gradients as [K block][pair][rows][out_w][block][2], for `pair`.
void InterleaveGradients(const Shape& s, const Band& band, int64_t pair, const BFloat16* d_y,
                         BFloat16* out) {
  const int64_t n = 2 * (band.first_pair + pair), block = s.Block();
  const int64_t block_stride = band.pairs * band.rows * s.out_w * block * 2;
  for (int64_t r = 0; r < band.rows; ++r) {
    for (int64_t w = 0; w < s.out_w; ++w) {
      const int64_t h = band.first_row + r;
      const BFloat16* a = At(d_y, s.batch, s.out_h, s.out_w, s.out_c, n, h, w);
      const BFloat16* b = At(d_y, s.batch, s.out_h, s.out_w, s.out_c, n + 1, h, w);
      BFloat16* position = out + ((pair * band.rows + r) * s.out_w + w) * block * 2;
      for (int64_t k = 0; k < s.out_c; k += kLanes) {
        Interleave16(a ? a + k : nullptr, b ? b + k : nullptr,
                     position + (k / block) * block_stride + (k % block) * 2);
      }
    }
  }
}

// sums[r][16 v ...] += x's channel pair r times the gradients' 16 v ..., over the band's
// output rows [first, last) (row g: pair g / rows, row g % rows) and all their columns. `x`
// points at the tap's shift of the band's first input and the tile's first channel, `d_y` at
// the first gradient of the rows.
template <int kVectors>
void Tile(const Shape& s, const Band& band, int64_t first, int64_t last, const BFloat16* x,
          const BFloat16* d_y, float* sums) {
  const int64_t pair_rows = band.InputRows(s), x_row = s.stride * s.InputRow();
  const int64_t x_column = s.stride * s.in_c * 2, d_y_position = kVectors * kLanes * 2;
  constexpr int kTileRows = kTileVectors / kVectors;
  __m512 sum[kTileRows][kVectors];
  for (int r = 0; r < kTileRows; ++r) {
    for (int v = 0; v < kVectors; ++v) sum[r][v] = _mm512_loadu_ps(sums + r * s.out_c + v * kLanes);
  }
  for (int64_t g = first; g < last; ++g) {
    const BFloat16* row = x + g / band.rows * pair_rows * s.InputRow() + g % band.rows * x_row;
    for (int64_t w = 0; w < s.out_w; ++w, d_y += d_y_position) {
      __m512bh gradient[kVectors];
      for (int v = 0; v < kVectors; ++v) {
        gradient[v] = (__m512bh)_mm512_loadu_si512(d_y + v * kLanes * 2);
      }
      const BFloat16* input = row + w * x_column;
      for (int r = 0; r < kTileRows; ++r) {
        int32_t bits;
        std::memcpy(&bits, input + r * 2, sizeof(bits));
        const __m512bh pair = (__m512bh)_mm512_set1_epi32(bits);
        for (int v = 0; v < kVectors; ++v) {
          sum[r][v] = _mm512_dpbf16_ps(sum[r][v], pair, gradient[v]);
        }
      }
    }
  }
  for (int r = 0; r < kTileRows; ++r) {
    for (int v = 0; v < kVectors; ++v) _mm512_storeu_ps(sums + r * s.out_c + v * kLanes, sum[r][v]);
  }
}

// sums[tap][c][k] += the band's products for taps [first_tap, last_tap) and the K blocks
// [first_block, last_block), from its interleaved inputs and gradients.
template <int kVectors>
void SumBand(const Shape& s, const Band& band, const BFloat16* x, const BFloat16* d_y,
             int64_t first_tap, int64_t last_tap, int64_t first_block, int64_t last_block,
             float* sums) {
  constexpr int64_t block = kVectors * kLanes;
  const int64_t band_rows = band.pairs * band.rows;
  const int64_t pass_rows = std::max<int64_t>(1, kPassPositions / s.out_w);
  for (int64_t b = first_block; b < last_block; ++b) {
    const BFloat16* gradients = d_y + b * band_rows * s.out_w * block * 2;
    for (int64_t first = 0; first < band_rows; first += pass_rows) {
      const int64_t last = std::min(band_rows, first + pass_rows);
      const BFloat16* pass = gradients + first * s.out_w * block * 2;
      for (int64_t tap = first_tap; tap < last_tap; ++tap) {
        const BFloat16* shifted = x + tap / 3 * s.InputRow() + tap % 3 * s.in_c * 2;
        float* tap_sums = sums + tap * s.in_c * s.out_c + b * block;
        for (int64_t c = 0; c < s.in_c; c += kTileVectors / kVectors) {
          Tile<kVectors>(s, band, first, last, shifted + c * 2, pass, tap_sums + c * s.out_c);
        }
      }
    }
  }
}

#pragma GCC pop_options

template <int kVectors>
void OwnSums(const Shape& s, const BFloat16* x, const BFloat16* d_y, BFloat16* d_w,
             int64_t num_threads) {
  const int64_t pairs = std::clamp<int64_t>(kBandBytes / s.PairBytes(), 1, s.Pairs());
  const int64_t rows =
      pairs > 1 ? s.out_h : std::clamp<int64_t>(kBandBytes / s.RowBytes(), 1, s.out_h);
  const int64_t pair_bands = (s.Pairs() + pairs - 1) / pairs;
  const int64_t row_bands = (s.out_h + rows - 1) / rows;
  const int64_t size = kTaps * s.in_c * s.out_c;
  std::vector<float> sums(num_threads * size);
  std::atomic<bool> failed{false};
#pragma omp parallel num_threads(num_threads)
  {
    float* own = sums.data() + omp_get_thread_num() * size;
    std::unique_ptr<BFloat16[]> inputs, gradients;
    try {
      inputs.reset(new BFloat16[pairs * Band{0, pairs, 0, rows}.InputRows(s) * s.InputRow()]);
      gradients.reset(new BFloat16[pairs * rows * s.out_w * s.out_c * 2]);
    } catch (...) {
      failed = true;
    }
#pragma omp for schedule(static)
    for (int64_t unit = 0; unit < pair_bands * row_bands; ++unit) {
      if (failed) continue;
      const int64_t first_pair = unit / row_bands * pairs, first_row = unit % row_bands * rows;
      const Band band{first_pair, std::min(pairs, s.Pairs() - first_pair), first_row,
                      std::min(rows, s.out_h - first_row)};
      for (int64_t pair = 0; pair < band.pairs; ++pair) {
        InterleaveInputs(s, band, pair, x, inputs.get());
        InterleaveGradients(s, band, pair, d_y, gradients.get());
      }
      SumBand<kVectors>(s, band, inputs.get(), gradients.get(), 0, kTaps, 0,
                        s.out_c / (kVectors * kLanes), own);
    }
#pragma omp for schedule(static)
    for (int64_t i = 0; i < size; ++i) {
      float total = 0.0f;
      for (int64_t t = 0; t < num_threads; ++t) total += sums[t * size + i];
      d_w[i] = zoo_kernels::FromFloat<BFloat16>(total);
    }
  }
  if (failed) throw std::bad_alloc();
}

template <int kVectors>
void SharedSums(const Shape& s, const BFloat16* x, const BFloat16* d_y, BFloat16* d_w,
                int64_t num_threads) {
  const int64_t pairs = std::clamp<int64_t>(kChunkBytes / s.PairBytes(), 1, s.Pairs());
  const int64_t blocks = s.out_c / (kVectors * kLanes), size = kTaps * s.in_c * s.out_c;
  std::vector<float> sums(size, 0.0f);
  std::vector<BFloat16> inputs(pairs * Band{0, pairs, 0, s.out_h}.InputRows(s) * s.InputRow());
  std::vector<BFloat16> gradients(pairs * s.out_h * s.out_w * s.out_c * 2);
  for (int64_t first_pair = 0; first_pair < s.Pairs(); first_pair += pairs) {
    const Band band{first_pair, std::min(pairs, s.Pairs() - first_pair), 0, s.out_h};
#pragma omp parallel num_threads(num_threads)
    {
#pragma omp for schedule(static)
      for (int64_t pair = 0; pair < band.pairs; ++pair) {
        InterleaveInputs(s, band, pair, x, inputs.data());
        InterleaveGradients(s, band, pair, d_y, gradients.data());
      }
#pragma omp for schedule(static)
      for (int64_t item = 0; item < kTaps * blocks; ++item) {
        const int64_t tap = item / blocks, b = item % blocks;
        SumBand<kVectors>(s, band, inputs.data(), gradients.data(), tap, tap + 1, b, b + 1,
                          sums.data());
      }
    }
  }
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t i = 0; i < size; ++i) d_w[i] = zoo_kernels::FromFloat<BFloat16>(sums[i]);
}

template <int kVectors>
void WeightGradient(const Shape& s, const BFloat16* x, const BFloat16* d_y, BFloat16* d_w,
                    int64_t num_threads) {
  if (s.in_c * s.out_c <= kOwnSumsUpTo) {
    OwnSums<kVectors>(s, x, d_y, d_w, num_threads);
  } else {
    SharedSums<kVectors>(s, x, d_y, d_w, num_threads);
  }
}

// The Shape of the weight gradient of NHWC `in` to NHWC `out` by the 3x3 HWIO `kernel` at
// `stride`; false where they do not fit together or the channels are not in multiples of 16.
bool ShapeOf(ffi::Span<const int64_t> in, ffi::Span<const int64_t> out,
             ffi::Span<const int64_t> kernel, int64_t stride, Shape* s) {
  if (in.size() != 4 || out.size() != 4 || kernel.size() != 4 || (stride != 1 && stride != 2)) {
    return false;
  }
  *s = Shape{in[0], in[1], in[2], in[3], out[1], out[2], out[3], stride};
  return kernel[0] == 3 && kernel[1] == 3 && kernel[2] == s->in_c && kernel[3] == s->out_c &&
         out[0] == s->batch && s->out_h == (s->in_h - 1) / stride + 1 &&
         s->out_w == (s->in_w - 1) / stride + 1 && s->in_c % kLanes == 0 &&
         s->out_c % kLanes == 0;
}

ffi::Error Conv3x3Weights(ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> d_y,
                          ffi::ResultBuffer<ffi::BF16> d_w, int64_t stride, int64_t num_threads) {
  Shape s;
  if (!ShapeOf(x.dimensions(), d_y.dimensions(), d_w->dimensions(), stride, &s) ||
      num_threads < 1) {
    return ffi::Error::InvalidArgument(
        "zoo_bf16_conv3x3_weights: expects NHWC x and d_y of a 3x3 convolution at stride 1 or "
        "2 padded by 1, channels in multiples of 16");
  }
  const auto* in = reinterpret_cast<const BFloat16*>(x.untyped_data());
  const auto* gradients = reinterpret_cast<const BFloat16*>(d_y.untyped_data());
  auto* out = reinterpret_cast<BFloat16*>(d_w->untyped_data());
  if (s.batch == 0 || s.out_h == 0 || s.out_w == 0) {
    std::fill_n(out, kTaps * s.in_c * s.out_c, BFloat16{0});
    return ffi::Error::Success();
  }
  try {
    switch (s.Block()) {
      case 64:
        WeightGradient<4>(s, in, gradients, out, num_threads);
        break;
      case 32:
        WeightGradient<2>(s, in, gradients, out, num_threads);
        break;
      default:
        WeightGradient<1>(s, in, gradients, out, num_threads);
    }
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("zoo_bf16_conv3x3_weights: ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

ZOO_EXPORT XLA_FFI_Error* zoo_bf16_conv3x3_weights(XLA_FFI_CallFrame* call_frame);

XLA_FFI_DEFINE_HANDLER_SYMBOL(zoo_bf16_conv3x3_weights, Conv3x3Weights,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::BF16>>()
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("num_threads"));

// 1 where this CPU runs it (AVX-512 with AVX512-BF16), else 0.
ZOO_EXPORT int zoo_bf16_conv3x3_weights_available() {
  return __builtin_cpu_supports("x86-64-v4") && __builtin_cpu_supports("avx512bf16") ? 1 : 0;
}
