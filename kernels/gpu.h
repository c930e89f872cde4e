// The GPU side of engram-store behind a plain C++ header: no CUDA types, so
// store/ and server/ compile without CUDA. Built from gpu.cu when
// ENGRAM_WITH_CUDA is on, else from gpu_stub.cc, whose functions report the
// GPU tier as unavailable.
#ifndef ENGRAM_KERNELS_GPU_H_
#define ENGRAM_KERNELS_GPU_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/token_hash.h"
#include "kernels/view_rows.h"

namespace engram::gpu {

// True when this build has CUDA code in it.
bool Compiled();
// Usable CUDA devices; 0 with `why` filled when there are none (no driver,
// no device, or a build without CUDA).
int DeviceCount(std::string* why);
// Selects `device` for the calling thread.
absl::Status SetDevice(int device);
// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs)".
std::string DeviceName(int device);
absl::Status MemoryInfo(size_t* free_bytes, size_t* total_bytes);

absl::StatusOr<void*> DeviceAlloc(size_t bytes);
void DeviceFree(void* ptr);
// Synchronous host -> device copy.
absl::Status CopyToDevice(void* device_dst, const void* host_src, size_t bytes);
absl::Status CopyToHost(void* host_dst, const void* device_src, size_t bytes);

// Page-locked host memory the GPU can DMA into.
absl::StatusOr<void*> PinnedAlloc(size_t bytes);
void PinnedFree(void* ptr);
// Pins existing host memory (cudaHostRegister); Unregister before freeing.
absl::Status HostRegister(void* ptr, size_t bytes);
void HostUnregister(void* ptr);

// An opaque CUDA stream.
using Stream = void*;
absl::StatusOr<Stream> StreamCreate();
void StreamDestroy(Stream stream);
absl::Status CopyToDeviceAsync(void* dst, const void* src, size_t bytes,
                               Stream stream);
absl::Status CopyToHostAsync(void* dst, const void* src, size_t bytes,
                             Stream stream);
absl::Status StreamSynchronize(Stream stream);
// Waits for all work submitted to the current device so far.
absl::Status DeviceSynchronize();

// Value of *error_flag when every id was in range.
inline constexpr uint64_t kNoError = ~uint64_t{0};

// One gather: output row i (of num_ids) = table_{i mod heads}[ids[i]],
// converted from in_dtype to out_dtype (engram::DType values). All pointers
// are device pointers: `tables` and `vocab` are arrays of `heads` entries.
// An id outside [0, vocab[h]) is never read: its row is left unwritten and
// *error_flag becomes min(current, i) — reset it to kNoError before the
// launch (ResetErrorFlag).
struct GatherLaunch {
  const uint8_t* const* tables = nullptr;
  const int64_t* vocab = nullptr;
  int heads = 0;
  int64_t dim = 0;
  int in_dtype = 1;
  int out_dtype = 1;
  const int64_t* ids = nullptr;
  int64_t num_ids = 0;
  uint8_t* out = nullptr;
  uint64_t* error_flag = nullptr;
};
absl::Status ResetErrorFlag(uint64_t* error_flag, Stream stream);
absl::Status LaunchGather(const GatherLaunch& launch, Stream stream);

// Device-to-device copy of `bytes` (the benchmark's floor).
absl::Status LaunchDeviceCopy(void* dst, const void* src, size_t bytes,
                              Stream stream);

// ---- Zero-copy lookups of a co-located client (docs/gpu.md) ----

// The calling thread's current device, or -1.
int CurrentDevice();
// The 16 bytes of `device`'s UUID (cudaDeviceProp::uuid): how a client
// tells whether the server's GPU copy is on its own device.
absl::StatusOr<std::string> DeviceUuid(int device);
// The device whose UUID is `uuid`; NOT_FOUND when none here has it.
absl::StatusOr<int> DeviceWithUuid(const std::string& uuid);
// The 64-byte CUDA IPC handle of the allocation starting at `device_ptr`
// (made on `device`).
absl::StatusOr<std::string> IpcHandleOf(int device, void* device_ptr);
// Opens another process's allocation on the current device; IpcClose it
// before the exporter may free it.
absl::StatusOr<void*> IpcOpen(const std::string& handle);
void IpcClose(void* ptr);
// Registers host memory for kernels to read (mapped, portable) and returns
// the address they read it at. `read_only`: memory this process maps
// read-only (cudaHostRegisterReadOnly); FAILED_PRECONDITION where the
// platform cannot register such memory (many x86 hosts), which then needs
// a writable mapping.
absl::StatusOr<const void*> HostRegisterMapped(const void* ptr, size_t bytes,
                                               bool read_only);
void HostUnregisterConst(const void* ptr);

// Where a pointer points, as CUDA sees it.
struct PointerInfo {
  bool device_memory = false;  // cudaMalloc'd (or IPC/VMM) device memory
  bool host_mapped = false;    // pinned or registered host memory
  int device = -1;             // device_memory: its device
};
PointerInfo DescribePointer(const void* ptr);
// True when `stream` is being captured into a CUDA graph.
bool StreamCapturing(Stream stream);

// An event that tells whether the work before it on a stream is done,
// without waiting: staging buffers are reused only once it has passed.
using Event = void*;
absl::StatusOr<Event> EventCreate();
void EventDestroy(Event event);
absl::Status EventRecord(Event event, Stream stream);
bool EventDone(Event event);  // true also for an event never recorded

// A layer's tables as kernels on one device read them: device copies
// opened through CUDA IPC, or host tables mapped over UVA. One view per
// layer version, immutable, in device memory; a view slot (one device
// word) points at the current view, so a launch (or a CUDA graph replay)
// reads whichever version is current when it starts.
inline constexpr int kMaxViewHeads = 128;
enum ViewState : uint32_t {
  kViewPresent = 1,
  kViewRemoved = 2,      // the layer was removed
  kViewUnavailable = 3,  // the server is gone (or not reachable)
};
struct ViewSpec {
  uint32_t state = kViewPresent;
  int heads = 0;
  int64_t dim = 0;
  int dtype = 1;        // engram::DType of the rows stored
  int quant_block = 0;  // the layer's quantization block; 0: none
  uint64_t version = 0;
  // What the version's rows mean to token lookups: the server's token
  // model of it (EngramHasher::TokenModel; 0: none, all ones: stale).
  uint64_t token_model = 0;
  std::vector<const uint8_t*> tables;  // device-readable, one per head
  std::vector<int64_t> vocab;          // rows per head
  // Host tables: the server's epoch slot of each head's range (device-
  // readable) and the generation it holds while the range is exported.
  // A tripwire only: the server keeps leased ranges alive.
  std::vector<const uint64_t*> epoch_slots;  // empty for device copies
  std::vector<uint64_t> generations;
};
// Copies `spec` into new device memory, through `stream`, and waits (off
// the hot path; a non-blocking stream keeps callers' streams out of it).
absl::StatusOr<void*> CreateView(const ViewSpec& spec, Stream stream);
void FreeView(void* view);
// A device word holding a view pointer (initially null: unavailable).
absl::StatusOr<void*> CreateViewSlot();
void FreeViewSlot(void* slot);
// Points `slot` at `view` with one atomic device store, ordered on
// `stream`, and waits for it (the caller's later launches see it).
absl::Status PublishView(void* slot, void* view, Stream stream);

// A lookup's outcome, written by the launch into its status words (device
// memory): word 0 is kStatusOk, an error code below, or the index of the
// first row whose id was out of range; word 1 holds the view the launch
// read; word 2 is the launch's own scratch. The launch sets all three, so
// they need no initial value.
inline constexpr int kStatusWords = 3;
inline constexpr uint64_t kStatusOk = ~uint64_t{0};
inline constexpr uint64_t kStatusRemoved = ~uint64_t{0} - 1;
inline constexpr uint64_t kStatusUnavailable = ~uint64_t{0} - 2;
inline constexpr uint64_t kStatusLayoutChanged = ~uint64_t{0} - 3;
inline constexpr uint64_t kStatusReleased = ~uint64_t{0} - 4;
// A token lookup met a version whose token model is not the one it hashes
// with (the layer was loaded again with another model, or without one).
inline constexpr uint64_t kStatusModelChanged = ~uint64_t{0} - 5;
// One zero-copy lookup: num_ids rows (row i = table_{i mod heads}[ids[i]],
// converted to out_dtype) from the view `slot` points at when the launch
// starts, into `out`, its outcome into `status`. `ids` and `out` must be
// device-readable/writable (device memory, or pinned host memory).
struct ViewGather {
  const void* slot = nullptr;
  const int64_t* ids = nullptr;
  int64_t num_ids = 0;
  int heads = 0;  // the layout the caller sized `out` for
  int64_t dim = 0;
  int in_dtype = 1;
  int out_dtype = 1;
  // The layer's quantization block as the caller knows it (0: none): a
  // view of another one is a changed layout.
  int quant_block = 0;
  // Rows are FP8 E4M3 weights plus UE8M0 scales (dim = W + W / quant_block
  // bytes), returned as W values of the float out_dtype (common/dtype.h's
  // DequantizeFp8Row, bit for bit). Blocks of 16, 32, 64 or 128.
  bool dequantize = false;
  uint8_t* out = nullptr;
  uint64_t* status = nullptr;  // kStatusWords device words
  // How the ids name rows (fused ids, a head slice, entries); columns 0:
  // per-head ids of every head. Out-of-range ids are reported by index.
  ViewRowForm form{kViewPerHead, 0, 0, 0};
  // Token lookups: when set, `ids` is unused and row i's id is the Engram
  // hash of the tokens (kernels/token_hash.h; num_ids = batch * length *
  // heads, heads = (N - 1) * H), computed in the same launch. The launch
  // reads only a view of `token_model`; a token outside the map leaves its
  // rows unwritten and is reported as an out-of-range row.
  const TokenHashArgs* tokens = nullptr;
  uint64_t token_model = 0;
};
// Whether the view gathers dequantize blocks of `block` weights.
bool CanDequantizeBlock(int block);
// Enqueues `gathers` on `stream` as one cooperative kernel per group of up
// to 8 lookups with the same dtypes (a decode step's layers: one launch).
// Each lookup reads one version, whatever is published meanwhile; no host
// synchronisation; capturable in a CUDA graph when every pointer is fixed.
// Lookups of one call must not share status words.
absl::Status LaunchViewGathers(const ViewGather* gathers, size_t count,
                               Stream stream);
absl::Status LaunchViewGather(const ViewGather& launch, Stream stream);

// CUDA graphs of a stream's work (tests and benchmarks). Capture is
// thread-local: other threads' CUDA calls (the watch applying an update)
// are not refused meanwhile.
using GraphExec = void*;
absl::Status BeginCapture(Stream stream);
absl::StatusOr<GraphExec> EndCapture(Stream stream);  // instantiated
absl::Status GraphLaunch(GraphExec graph, Stream stream);
void GraphDestroy(GraphExec graph);

// Event-timed milliseconds of `iterations` runs of `fn` on `stream`.
absl::StatusOr<float> TimeOnStream(Stream stream, int iterations,
                                   absl::Status (*fn)(void*), void* arg);

}  // namespace engram::gpu

#endif  // ENGRAM_KERNELS_GPU_H_
