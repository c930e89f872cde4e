// Context on an error on its way up: "where: what went wrong".
#ifndef ENGRAM_COMMON_STATUS_CONTEXT_H_
#define ENGRAM_COMMON_STATUS_CONTEXT_H_

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace engram {

// `status` with its context put before the message, joined by ": " (the
// parts of `context` are concatenated), and the same code. OK stays OK.
template <typename... Context>
absl::Status WithContext(const absl::Status& status,
                         const Context&... context) {
  if (status.ok()) return status;
  return absl::Status(status.code(),
                      absl::StrCat(context..., ": ", status.message()));
}

}  // namespace engram

#endif  // ENGRAM_COMMON_STATUS_CONTEXT_H_
