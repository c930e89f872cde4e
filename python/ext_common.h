// Helpers shared by the translation units of _engram_store.
#ifndef ENGRAM_PYTHON_EXT_COMMON_H_
#define ENGRAM_PYTHON_EXT_COMMON_H_

#include <pybind11/pybind11.h>

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/client.h"

namespace engram {

// A non-OK status on its way to Python (translated to StatusError).
struct StatusException {
  absl::Status status;
};

[[noreturn]] inline void Raise(const absl::Status& status) {
  throw StatusException{status};
}

template <typename T>
T Unwrap(absl::StatusOr<T> v) {
  if (!v.ok()) Raise(v.status());
  return *std::move(v);
}

inline std::optional<DType> ParseDType(const std::optional<std::string>& name) {
  if (!name) return std::nullopt;
  if (*name == "float32") return DType::kFloat32;
  if (*name == "bfloat16") return DType::kBFloat16;
  if (*name == "float16") return DType::kFloat16;
  if (*name == "uint8") return DType::kUInt8;
  throw pybind11::value_error(
      "dtype must be float32, bfloat16, float16 or uint8; got " + *name);
}

// Lookup options from Python's keywords: id_form "per_head" | "fused" |
// "entries", heads (head_begin, head_end) or None.
inline LookupOptions ParseLookupOptions(
    const std::optional<std::string>& output_dtype, const std::string& id_form,
    const std::optional<std::pair<int64_t, int64_t>>& heads) {
  LookupOptions options;
  options.output_dtype = ParseDType(output_dtype);
  if (id_form == "fused") {
    options.id_form = IdForm::kFused;
  } else if (id_form == "entries") {
    options.id_form = IdForm::kEntries;
  } else if (id_form != "per_head") {
    throw pybind11::value_error(
        "id_form must be per_head, fused or entries; got " + id_form);
  }
  if (heads) {
    options.head_begin = heads->first;
    options.head_end = heads->second;
  }
  return options;
}

// Adds the device-lookup methods to Client and dlpack_info to the module
// (python/device_ext.cc).
void BindDeviceLookups(pybind11::module_& m,
                       pybind11::class_<Client>& client_class);

}  // namespace engram

#endif  // ENGRAM_PYTHON_EXT_COMMON_H_
