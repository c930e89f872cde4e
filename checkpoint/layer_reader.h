// Rows of one manifest layer, read from its checkpoint files.
#ifndef ENGRAM_CHECKPOINT_LAYER_READER_H_
#define ENGRAM_CHECKPOINT_LAYER_READER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "checkpoint/checkpoint_file.h"
#include "checkpoint/manifest.h"
#include "common/layout.h"

namespace engram::checkpoint {

// The checked mapping from a layer's rows to bytes of its source files:
// every file mapped read-only, every tensor's dtype, shape and byte width
// matched to the layout. Rows are only read (faulted from the page cache or
// disk) when asked for. Immutable after Open; ReadRows is safe from any
// number of threads.
class LayerReader {
 public:
  // Opens and checks everything `spec` names; index files and the files
  // they name must lie under `root` (when not empty). INVALID_ARGUMENT
  // naming the layer, tensor or file and the numbers for any mismatch: a
  // missing tensor, a wrong row count, dtype or byte width, byte widths
  // that do not add up to the row, a file shorter than its header says.
  static absl::StatusOr<std::unique_ptr<LayerReader>> Open(
      const LayerSpec& spec, const std::string& root);

  const LayerLayout& layout() const { return layout_; }
  int64_t layer_id() const { return layer_id_; }
  // The manifest asks to swap out a committed layer of this id.
  bool replace() const { return replace_; }
  // Writes rows [row, row + rows) of `head` to `dst` (rows x row_bytes),
  // converting float32 sources to a 16-bit layer dtype (nearest even).
  // Requires a valid range; DATA_LOSS on an I/O error. Safe from several
  // threads at once.
  absl::Status ReadRows(int head, int64_t row, int64_t rows,
                        uint8_t* dst) const;
  // Asks the kernel to read those rows' bytes ahead; best effort.
  void Prefetch(int head, int64_t row, int64_t rows) const;
  // Bytes of the source files that hold the layer's rows.
  uint64_t source_bytes() const { return source_bytes_; }

 private:
  // One source tensor's share of a row: its bytes for head h row r are at
  // offset head_offset[h] + r * src_row_bytes of file, and land at
  // dst_offset of the layer's row.
  struct Column {
    std::shared_ptr<const CheckpointFile> file;
    std::vector<uint64_t> head_offset;
    size_t src_row_bytes = 0;
    size_t dst_offset = 0;
    bool from_float32 = false;  // converted to layout_.dtype
    int head = -1;              // npy: the one head it holds; -1: every head
  };
  LayerReader() = default;

  int64_t layer_id_ = 0;
  bool replace_ = false;
  LayerLayout layout_;
  std::vector<Column> columns_;
  uint64_t source_bytes_ = 0;
};

}  // namespace engram::checkpoint

#endif  // ENGRAM_CHECKPOINT_LAYER_READER_H_
