// A small JSON reader for the files checkpoints come with: load manifests,
// safetensors headers and their index files.
#ifndef ENGRAM_CHECKPOINT_JSON_H_
#define ENGRAM_CHECKPOINT_JSON_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace engram::checkpoint {

// One parsed JSON value. Numbers keep their text so integers up to 2^63
// stay exact (safetensors offsets pass 2^53). Object keys keep the order
// they had; a repeated key is refused at parse time. A plain value type.
class JsonValue {
 public:
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject };

  Kind kind() const { return kind_; }
  bool is_object() const { return kind_ == Kind::kObject; }
  bool is_array() const { return kind_ == Kind::kArray; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_number() const { return kind_ == Kind::kNumber; }
  bool is_bool() const { return kind_ == Kind::kBool; }

  // The string's text, a number's text, or "true"/"false".
  const std::string& text() const { return text_; }
  bool boolean() const { return text_ == "true"; }
  // INVALID_ARGUMENT unless this is an integer number in int64 range.
  absl::StatusOr<int64_t> AsInt64() const;
  const std::vector<JsonValue>& items() const { return items_; }
  const std::vector<std::pair<std::string, JsonValue>>& members() const {
    return members_;
  }
  // The member named `key` of an object, or nullptr.
  const JsonValue* Find(absl::string_view key) const;

  // A kind name for messages: "an object", "a string", ...
  static const char* KindName(Kind kind);

 private:
  friend class JsonParser;
  Kind kind_ = Kind::kNull;
  std::string text_;
  std::vector<JsonValue> items_;
  std::vector<std::pair<std::string, JsonValue>> members_;
};

// Parses one JSON document (RFC 8259; no comments, no trailing commas).
// INVALID_ARGUMENT with the line and column of the first error, prefixed
// with `what` (e.g. the file name). Nesting deeper than 64 is refused.
absl::StatusOr<JsonValue> ParseJson(absl::string_view text,
                                    absl::string_view what);

}  // namespace engram::checkpoint

#endif  // ENGRAM_CHECKPOINT_JSON_H_
