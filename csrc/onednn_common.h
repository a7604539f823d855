// What the oneDNN handlers of jax-zoo share: the engine, each thread's stream, the OpenMP team
// a call runs on, user-provided scratchpads and the trace-time implementation query's helpers.

#ifndef ZOO_CSRC_ONEDNN_COMMON_H_
#define ZOO_CSRC_ONEDNN_COMMON_H_

#include <omp.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "oneapi/dnnl/dnnl.hpp"

// The library is built with hidden visibility: only the handlers and the queries are exported.
#define ZOO_EXPORT extern "C" __attribute__((visibility("default")))

namespace zoo_onednn {

enum Precision : int64_t { kFloat32 = 0, kBFloat16 = 1 };

inline dnnl::memory::data_type DataType(int64_t precision) {
  return precision == kBFloat16 ? dnnl::memory::data_type::bf16 : dnnl::memory::data_type::f32;
}

inline dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

inline dnnl::stream& Stream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

// The OpenMP team of the calling thread (XLA calls from several threads; each keeps its own).
inline void UseThreads(int64_t num_threads) { omp_set_num_threads(static_cast<int>(num_threads)); }

// Each call brings its own scratchpad, so one cached primitive runs concurrently from XLA's threads.
inline dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

inline bool IsReference(const std::string& implementation) {
  return implementation.find("ref") != std::string::npos;
}

// The queries' answer: `name` into `out` (NUL-terminated); 1 a real kernel, 0 a reference
// kernel, -1 none ("unsupported" or an "error: ..." from oneDNN).
inline int ReportImplementation(const std::string& name, char* out, int64_t out_size) {
  std::strncpy(out, name.c_str(), out_size - 1);
  out[out_size - 1] = '\0';
  if (name == "unsupported" || name.rfind("error:", 0) == 0) return -1;
  return IsReference(name) ? 0 : 1;
}

}  // namespace zoo_onednn

#endif  // ZOO_CSRC_ONEDNN_COMMON_H_
