// Device lookups for Python (docs/gpu.md, docs/python.md): Client methods
// over Client::LookupToDevice taking raw device addresses (the package reads
// them from __cuda_array_interface__ or __dlpack__), and dlpack_info, which
// reads a DLPack capsule without taking ownership of the tensor's memory.
#include <pybind11/stl.h>

#include <cstdint>
#include <vector>

#include "python/ext_common.h"

namespace py = pybind11;

namespace engram {
namespace {

// The DLPack C ABI (v0.x, "dltensor" capsules), as its specification lays
// it out: the fields read here.
struct DLDevice {
  int32_t device_type;  // 1 CPU, 2 CUDA, 3 CUDA host (pinned)
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;  // 0 int, 1 uint, 2 float, 4 bfloat
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; null: C-contiguous
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};

py::dict DlpackInfo(const py::capsule& capsule) {
  if (std::string(capsule.name() == nullptr ? "" : capsule.name()) !=
      "dltensor") {
    throw py::value_error("not an unused DLPack capsule (\"dltensor\")");
  }
  auto* managed = static_cast<DLManagedTensor*>(capsule.get_pointer());
  const DLTensor& t = managed->dl_tensor;
  py::dict info;
  info["ptr"] = reinterpret_cast<uintptr_t>(static_cast<uint8_t*>(t.data) +
                                            t.byte_offset);
  info["device_type"] = t.device.device_type;
  info["device_id"] = t.device.device_id;
  std::vector<int64_t> shape(t.shape, t.shape + t.ndim);
  info["shape"] = shape;
  if (t.strides != nullptr) {
    info["strides"] = std::vector<int64_t>(t.strides, t.strides + t.ndim);
  } else {
    info["strides"] = py::none();
  }
  info["code"] = t.dtype.code;
  info["bits"] = t.dtype.bits;
  info["lanes"] = t.dtype.lanes;
  // Consumed: the caller keeps the producing object (and so the memory)
  // alive for as long as it uses the address.
  PyCapsule_SetName(capsule.ptr(), "used_dltensor");
  if (managed->deleter != nullptr) managed->deleter(managed);
  return info;
}

DeviceLookupRequest Request(int64_t layer_id, uintptr_t ids, int64_t num_ids,
                            uintptr_t out, size_t out_bytes,
                            const std::optional<std::string>& output_dtype,
                            uintptr_t stream, uintptr_t status) {
  DeviceLookupRequest r;
  r.layer_id = layer_id;
  r.ids = reinterpret_cast<const int64_t*>(ids);
  r.num_ids = num_ids;
  r.out = reinterpret_cast<void*>(out);
  r.out_bytes = out_bytes;
  r.output_dtype = ParseDType(output_dtype);
  r.stream = reinterpret_cast<void*>(stream);
  r.status = reinterpret_cast<uint64_t*>(status);
  return r;
}

}  // namespace

void BindDeviceLookups(py::module_& m, py::class_<Client>& client_class) {
  m.def("dlpack_info", &DlpackInfo, py::arg("capsule"));
  m.attr("STATUS_WORDS") = 2;
  client_class
      .def(
          "lookup_device",
          [](Client& c, int64_t layer_id, uintptr_t ids, int64_t num_ids,
             uintptr_t out, size_t out_bytes,
             std::optional<std::string> output_dtype, uintptr_t stream,
             uintptr_t status) {
            const DeviceLookupRequest r =
                Request(layer_id, ids, num_ids, out, out_bytes, output_dtype,
                        stream, status);
            DevicePath path = DevicePath::kRpc;
            absl::Status s;
            {
              py::gil_scoped_release nogil;
              s = c.LookupToDevice(r, &path);
            }
            if (!s.ok()) Raise(s);
            return std::string(DevicePathName(path));
          },
          py::arg("layer_id"), py::arg("ids"), py::arg("num_ids"),
          py::arg("out"), py::arg("out_bytes"), py::arg("output_dtype"),
          py::arg("stream"), py::arg("status"))
      .def(
          "device_result",
          [](Client& c, int64_t layer_id, uintptr_t out, uintptr_t stream,
             uintptr_t status) {
            const DeviceLookupRequest r =
                Request(layer_id, 0, 0, out, 0, std::nullopt, stream, status);
            absl::Status s;
            {
              py::gil_scoped_release nogil;
              s = c.DeviceLookupResult(r);
            }
            if (!s.ok()) Raise(s);
          },
          py::arg("layer_id"), py::arg("out"), py::arg("stream"),
          py::arg("status"))
      .def(
          "prepare_device",
          [](Client& c, int64_t layer_id, int device) {
            absl::StatusOr<DevicePath> path;
            {
              py::gil_scoped_release nogil;
              path = c.PrepareDeviceLookups(layer_id, device);
            }
            return std::string(DevicePathName(Unwrap(std::move(path))));
          },
          py::arg("layer_id"), py::arg("device"))
      .def(
          "device_path_note",
          [](Client& c, int64_t layer_id, int device) {
            return c.DevicePathNote(layer_id, device);
          },
          py::arg("layer_id"), py::arg("device"));
}

}  // namespace engram
