#include "client/device_mapping.h"

#include "absl/strings/str_cat.h"

namespace engram {

DevicePath DeviceMapping::Open(const MappedVersion& v, int device,
                               gpu::ViewSpec* spec, std::string* note) {
  if (!v.gpu_why.ok()) {
    *note = absl::StrCat("no GPU copy: ", v.gpu_why.message());
  } else {
    absl::StatusOr<int> on = gpu::DeviceWithUuid(v.gpu_uuid);
    if (!on.ok() || *on != device) {
      *note = "the server's GPU copy is on another device";
    } else {
      absl::Status s;
      for (size_t h = 0; s.ok() && h < v.gpu_handles.size(); ++h) {
        absl::StatusOr<gpu::IpcMapping> p = gpu::OpenIpc(v.gpu_handles[h]);
        if (!p.ok()) {
          s = p.status();
          break;
        }
        spec->tables.push_back(static_cast<const uint8_t*>(p->get()) +
                               v.gpu_offsets[h]);
        opened_.push_back(std::move(*p));
      }
      if (s.ok()) return DevicePath::kGpuShared;
      opened_.clear();
      spec->tables.clear();
      *note = absl::StrCat("the GPU copy cannot be opened: ", s.message());
    }
  }
  if (!v.host_why.ok()) {
    absl::StrAppend(note, "; host tables: ", v.host_why.message());
    return DevicePath::kRpc;
  }
  // Read-only registration where the platform has it, else the same
  // segments attached writable (which only the server's user may) and
  // registered: many x86 hosts cannot register read-only memory.
  std::vector<const uint8_t*> bases;  // device address of each extent
  absl::Status s = Register(v, /*writable=*/false, &bases);
  if (s.code() == absl::StatusCode::kFailedPrecondition) {
    s = Register(v, /*writable=*/true, &bases);
    if (s.ok()) {
      absl::StrAppend(note, note->empty() ? "" : "; ",
                      "host tables attached read-write for CUDA (this "
                      "platform cannot register read-only memory)");
    }
  }
  auto device_address = [&](const void* p) -> const uint8_t* {
    const auto* b = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < v.extents.size(); ++i) {
      const MappedVersion::Extent& e = v.extents[i];
      if (b >= e.data && b < e.data + e.size) return bases[i] + (b - e.data);
    }
    return nullptr;
  };
  for (size_t h = 0; s.ok() && h < v.tables.size(); ++h) {
    const uint8_t* table = device_address(v.tables[h]);
    const uint8_t* slot = device_address(v.epoch_slots[h]);
    if (table == nullptr || slot == nullptr ||
        reinterpret_cast<uintptr_t>(table) % 16 != 0) {
      s = absl::FailedPreconditionError(
          "a table is not 16-byte aligned in its mapping");
      break;
    }
    spec->tables.push_back(table);
    spec->epoch_slots.push_back(reinterpret_cast<const uint64_t*>(slot));
    spec->generations.push_back(v.generations[h]);
  }
  if (s.ok()) return DevicePath::kHostMapped;
  registered_.clear();
  writable_.clear();
  spec->tables.clear();
  spec->epoch_slots.clear();
  spec->generations.clear();
  absl::StrAppend(note,
                  "; host tables cannot be mapped for the GPU: ", s.message());
  return DevicePath::kRpc;
}

absl::Status DeviceMapping::Register(const MappedVersion& v, bool writable,
                                     std::vector<const uint8_t*>* bases) {
  absl::Status s;
  for (const MappedVersion::Extent& e : v.extents) {
    const uint8_t* at = e.data;
    if (writable) {
      absl::StatusOr<transport::AttachedSegment> segment =
          transport::AttachedSegment::Attach(e.shm_id, /*writable=*/true);
      if (!segment.ok()) {
        s = segment.status();
        break;
      }
      if (segment->size() != e.size) {
        s = absl::FailedPreconditionError("a segment changed size");
        break;
      }
      at = segment->data();
      writable_.push_back(*std::move(segment));
    }
    absl::StatusOr<const void*> d =
        gpu::HostRegisterMapped(at, e.size, /*read_only=*/!writable);
    if (!d.ok()) {
      s = d.status();
      break;
    }
    registered_.emplace_back(at);
    bases->push_back(static_cast<const uint8_t*>(*d));
  }
  if (!s.ok()) {
    registered_.clear();
    writable_.clear();
    bases->clear();
  }
  return s;
}

void DeviceMapping::Close() {
  opened_.clear();
  registered_.clear();
  writable_.clear();  // detached after unregistering
}

}  // namespace engram
