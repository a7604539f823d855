// What the extension's own kernels (csrc/max_pool.cc, csrc/add_relu.cc) and its oneDNN
// handlers share: the export macro and bfloat16's scalar conversions.

#ifndef ZOO_CSRC_KERNEL_COMMON_H_
#define ZOO_CSRC_KERNEL_COMMON_H_

#include <cstdint>
#include <cstring>
#include <type_traits>

// The library is built with hidden visibility: only the handlers and the queries are exported.
#define ZOO_EXPORT extern "C" __attribute__((visibility("default")))

namespace zoo_kernels {

// bfloat16 as stored: the top half of a float32's bits.
using BFloat16 = uint16_t;

inline float ToFloat(float value) { return value; }

inline float ToFloat(BFloat16 value) {
  const uint32_t bits = static_cast<uint32_t>(value) << 16;
  float wide;
  std::memcpy(&wide, &bits, sizeof(wide));
  return wide;
}

// float32 to T, bf16 rounded to nearest even (NaN stays NaN, made quiet). Branch-free, so the
// loops calling it vectorise.
template <typename T>
inline T FromFloat(float value) {
  if constexpr (std::is_same_v<T, float>) {
    return value;
  } else {
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof(bits));
    const uint32_t rounded = (bits + 0x7fff + ((bits >> 16) & 1)) >> 16;
    return static_cast<BFloat16>(value != value ? (bits >> 16) | 0x40 : rounded);
  }
}

// max(value, 0) as `lax.max` and `jax.nn.relu` have it: a NaN stays a NaN (x86's max, and so
// oneDNN's ReLU, answers 0). Branch-free, so the loops calling it vectorise.
template <typename T>
inline T Relu(T value) {
  const float wide = ToFloat(value);
  return (wide > 0.0f || wide != wide) ? value : T{};
}

}  // namespace zoo_kernels

#endif  // ZOO_CSRC_KERNEL_COMMON_H_
