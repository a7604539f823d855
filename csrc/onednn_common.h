// What the oneDNN handlers of jax-zoo share: the engine, each thread's stream, the OpenMP team
// a call runs on, user-provided scratchpads and the trace-time implementation query's helpers.

#ifndef ZOO_CSRC_ONEDNN_COMMON_H_
#define ZOO_CSRC_ONEDNN_COMMON_H_

#include <omp.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "kernel_common.h"
#include "oneapi/dnnl/dnnl.hpp"

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

// The number of int64 fields of an op's `Config` (a struct of int64_t with `num_threads`).
template <typename Config>
constexpr size_t kFields = sizeof(Config) / sizeof(int64_t);

// The plan of `kind` for `c`, built once by `make` and cached under a mutex (nullptr, also
// cached, where oneDNN has none). The cache is shared by every op with the same (Plan, Config,
// Kind) types (the float32 and bf16 Winograd convolutions share all three), so `make` is part
// of the key: one op never gets a plan another built for the same `kind` and `c`.
template <typename Plan, typename Config, typename Kind>
const Plan* CachedPlan(Kind kind, const Config& c,
                       std::unique_ptr<Plan> (*make)(Kind, const Config&)) {
  using Key = std::array<int64_t, kFields<Config> + 2>;
  static std::mutex mutex;
  static std::map<Key, std::unique_ptr<Plan>> plans;
  Key key;
  key[0] = static_cast<int64_t>(reinterpret_cast<intptr_t>(make));
  key[1] = kind;
  std::memcpy(key.data() + 2, &c, sizeof(Config));
  std::lock_guard<std::mutex> lock(mutex);
  auto found = plans.find(key);
  if (found == plans.end()) {
    UseThreads(c.num_threads);  // kernels block for the team size
    found = plans.emplace(key, make(kind, c)).first;
  }
  return found->second.get();
}

// The body of an op's `zoo_onednn_<op>_implementation` query: which implementation oneDNN
// picks for `kind` (0 ... kinds - 1) of `config` (the Config fields in order, `config_size` of
// them). Its name goes to `out` (NUL-terminated); returns 1 for a real kernel, 0 for a
// reference kernel, -1 for none.
template <typename Plan, typename Config, typename Kind>
int QueryImplementation(int64_t kind, int64_t kinds, const int64_t* config, int64_t config_size,
                        char* out, int64_t out_size,
                        std::unique_ptr<Plan> (*make)(Kind, const Config&)) {
  if (config_size != static_cast<int64_t>(kFields<Config>) || kind < 0 || kind >= kinds ||
      out_size < 1) {
    return -1;
  }
  Config c;
  std::memcpy(&c, config, sizeof(Config));
  std::string name;
  bool found = false;
  try {
    const Plan* plan = CachedPlan(static_cast<Kind>(kind), c, make);
    found = plan != nullptr;
    name = found ? plan->implementation : "unsupported";
  } catch (const dnnl::error& e) {
    name = std::string("error: ") + e.what();
  }
  std::strncpy(out, name.c_str(), out_size - 1);
  out[out_size - 1] = '\0';
  if (!found) return -1;
  return IsReference(name) ? 0 : 1;
}

}  // namespace zoo_onednn

#endif  // ZOO_CSRC_ONEDNN_COMMON_H_
