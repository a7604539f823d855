// What the two Winograd convolutions of jax-zoo share (csrc/winograd_conv.cc: F(4x4, 3x3) in
// float32; csrc/winograd_bf16_conv.cc: F(2x2, 3x3) in bf16): the shape and its tiles, the
// batched oneDNN matmul of the tiles' points by the kernel's, and the two ways a convolution
// runs it.
//
// A `Variant` names its points and types and transforms one tile each way:
//   static constexpr int64_t kPoints;  // points of a transformed tile
//   using In = ...; using Point = ...;  // activations; transformed tiles (matmul src)
//   static void TransformInputTile(const WinogradShape&, const In* x, int64_t tile, int64_t row,
//                                  int64_t rows, Point* points);
//   static void TransformOutputTile(const WinogradShape&, const float* products, int64_t tile,
//                                   int64_t row, int64_t rows, In* y);
//   static const WinogradGemm& FindGemm(const GemmConfig&);  // (points, rows, C) x (points, C, K)

#ifndef ZOO_CSRC_WINOGRAD_COMMON_H_
#define ZOO_CSRC_WINOGRAD_COMMON_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <unordered_map>

#include "onednn_common.h"
#include "xla/ffi/api/ffi.h"

namespace zoo_winograd {

struct WinogradShape {
  int64_t batch, height, width, in_c, out_c;
  int64_t tile_size, tiles_h, tiles_w, tiles;
};

// Where output tile `tile` lies: its image and its top-left output position.
struct TilePlace {
  int64_t image, top, left;
};

inline TilePlace PlaceOf(const WinogradShape& s, int64_t tile) {
  return {tile / (s.tiles_h * s.tiles_w), (tile / s.tiles_w) % s.tiles_h * s.tile_size,
          tile % s.tiles_w * s.tile_size};
}

// The shape of the convolution of NHWC `in` by the 3x3 HWIO `kernel` into NHWC `out` in output
// tiles of `tile_size`; false where they do not fit together or the channels are not in
// multiples of 16.
inline bool WinogradShapeOf(xla::ffi::Span<const int64_t> in,
                            xla::ffi::Span<const int64_t> kernel,
                            xla::ffi::Span<const int64_t> out, int64_t tile_size,
                            WinogradShape* s) {
  if (in.size() != 4 || kernel.size() != 4 || out.size() != 4 || kernel[0] != 3 ||
      kernel[1] != 3 || kernel[2] != in[3] || out[0] != in[0] || out[1] != in[1] ||
      out[2] != in[2] || out[3] != kernel[3] || in[3] % 16 != 0 || out[3] % 16 != 0) {
    return false;
  }
  const int64_t tiles_h = (in[1] + tile_size - 1) / tile_size;
  const int64_t tiles_w = (in[2] + tile_size - 1) / tile_size;
  *s = WinogradShape{in[0],     in[1],   in[2],   in[3],
                     out[3],    tile_size, tiles_h, tiles_w,
                     in[0] * tiles_h * tiles_w};
  return true;
}

// A batched matmul over `rows` tiles' points.
struct GemmConfig {
  int64_t rows, in_c, out_c;
  int64_t num_threads;
};

struct WinogradGemm {
  dnnl::matmul primitive;
  dnnl::memory::desc src, weights, dst, scratchpad;
  std::string implementation;
};

// A matmul on fixed buffers, with its own scratchpad: run once per block or chunk.
class GemmCall {
 public:
  GemmCall(const WinogradGemm& gemm, void* src, void* weights, void* dst)
      : gemm_(gemm),
        args_{{DNNL_ARG_SRC, dnnl::memory(gemm.src, zoo_onednn::Engine(), src)},
              {DNNL_ARG_WEIGHTS, dnnl::memory(gemm.weights, zoo_onednn::Engine(), weights)},
              {DNNL_ARG_DST, dnnl::memory(gemm.dst, zoo_onednn::Engine(), dst)},
              {DNNL_ARG_SCRATCHPAD, dnnl::memory(gemm.scratchpad, zoo_onednn::Engine())}} {}

  void Run() {
    dnnl::stream& stream = zoo_onednn::Stream();
    gemm_.primitive.execute(stream, args_);
    stream.wait();
  }

 private:
  const WinogradGemm& gemm_;
  std::unordered_map<int, dnnl::memory> args_;
};

// Rows [count, rows) of the (points, rows, channels) points: the last block's or chunk's unused
// rows, which the matmul reads too.
template <typename Point>
void ZeroRows(int64_t points, int64_t count, int64_t rows, int64_t channels, Point* data) {
  for (int64_t point = 0; count < rows && point < points; ++point) {
    std::fill_n(data + (point * rows + count) * channels, (rows - count) * channels, Point{});
  }
}

// Tiles per block on one thread: about `block_bytes` of points and products, at least
// `at_least`, and no more than splits the tiles evenly over the team.
template <typename Variant>
int64_t BlockRows(const WinogradShape& s, int64_t num_threads, int64_t block_bytes,
                  int64_t at_least) {
  const int64_t row_bytes = Variant::kPoints * (s.in_c * int64_t{sizeof(typename Variant::Point)} +
                                                s.out_c * int64_t{sizeof(float)});
  const int64_t even = (s.tiles + num_threads - 1) / num_threads;
  return std::max<int64_t>(1,
                           std::min(std::max<int64_t>(at_least, block_bytes / row_bytes / 8 * 8),
                                    even));
}

// Each thread transforms a block of `rows` tiles, multiplies it by the kernel's points `u` on
// one thread and transforms it back, while it is in its cache.
template <typename Variant>
void Blocked(const WinogradShape& s, const typename Variant::In* x, void* u,
             typename Variant::In* y, int64_t rows, int64_t num_threads) {
  using Point = typename Variant::Point;
  constexpr int64_t kPoints = Variant::kPoints;
  const WinogradGemm& gemm = Variant::FindGemm({rows, s.in_c, s.out_c, 1});
  const int64_t blocks = (s.tiles + rows - 1) / rows;
  std::atomic<bool> failed{false};
  // No exception may leave an OpenMP construct, and every thread must reach the `omp for`: a
  // thread whose buffers or matmul fail marks it and skips its remaining blocks.
#pragma omp parallel num_threads(num_threads)
  {
    std::unique_ptr<Point[]> points;
    std::unique_ptr<float[]> products;
    std::unique_ptr<GemmCall> call;
    try {
      points.reset(new Point[kPoints * rows * s.in_c]);
      products.reset(new float[kPoints * rows * s.out_c]);
      call = std::make_unique<GemmCall>(gemm, points.get(), u, products.get());
    } catch (...) {
      failed = true;
    }
#pragma omp for schedule(static)
    for (int64_t block = 0; block < blocks; ++block) {
      if (failed) continue;
      const int64_t first = block * rows, count = std::min(rows, s.tiles - first);
      for (int64_t row = 0; row < count; ++row) {
        Variant::TransformInputTile(s, x, first + row, row, rows, points.get());
      }
      ZeroRows(kPoints, count, rows, s.in_c, points.get());
      try {
        call->Run();
      } catch (...) {
        failed = true;
        continue;
      }
      for (int64_t row = 0; row < count; ++row) {
        Variant::TransformOutputTile(s, products.get(), first + row, row, rows, y);
      }
    }
  }
  if (failed) throw std::runtime_error("a block's buffers or matmul failed");
}

// The whole team runs each step on chunks of `rows` tiles (the matmul on all its threads).
template <typename Variant>
void Chunked(const WinogradShape& s, const typename Variant::In* x, void* u,
             typename Variant::In* y, int64_t rows, int64_t num_threads) {
  using Point = typename Variant::Point;
  constexpr int64_t kPoints = Variant::kPoints;
  const WinogradGemm& gemm = Variant::FindGemm({rows, s.in_c, s.out_c, num_threads});
  std::unique_ptr<Point[]> points(new Point[kPoints * rows * s.in_c]);
  std::unique_ptr<float[]> products(new float[kPoints * rows * s.out_c]);
  GemmCall call(gemm, points.get(), u, products.get());
  for (int64_t first = 0; first < s.tiles; first += rows) {
    const int64_t count = std::min(rows, s.tiles - first);
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int64_t row = 0; row < count; ++row) {
      Variant::TransformInputTile(s, x, first + row, row, rows, points.get());
    }
    ZeroRows(kPoints, count, rows, s.in_c, points.get());
    zoo_onednn::UseThreads(num_threads);
    call.Run();
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int64_t row = 0; row < count; ++row) {
      Variant::TransformOutputTile(s, products.get(), first + row, row, rows, y);
    }
  }
}

}  // namespace zoo_winograd

#endif  // ZOO_CSRC_WINOGRAD_COMMON_H_
