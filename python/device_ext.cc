// Device lookups for Python (docs/gpu.md, docs/python.md): DeviceLookupPlan
// over Client::LookupToDevice, built from CUDA array objects
// (python/cuda_arrays.h), and the parsing helpers engram_store.cuda uses.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "python/cuda_arrays.h"
#include "python/ext_common.h"

namespace py = pybind11;

namespace engram {
namespace {

using python::CudaArray;
using python::ReadCudaArray;

std::string ShapeRepr(const std::vector<int64_t>& shape) {
  return py::repr(py::tuple(py::cast(shape))).cast<std::string>();
}

// Device lookups read from Python objects once and launched any number of
// times (Client.device_lookups; lookup_device makes a one-lookup plan per
// call). The plan holds references to its arrays, so their addresses stay
// valid for its life, and to the client. Launches of one plan are
// serialized; launch() releases the GIL.
class DeviceLookupPlan {
 public:
  // `id_form` and `heads` (a head slice) apply to every lookup.
  DeviceLookupPlan(py::object client, const py::sequence& lookups,
                   const py::object& stream, const std::string& id_form,
                   const std::optional<std::pair<int64_t, int64_t>>& heads)
      : client_(client.cast<Client*>()),
        owner_(std::move(client)),
        form_(ParseLookupOptions(std::nullopt, id_form, heads)) {
    const uintptr_t handle = python::StreamHandle(stream);
    if (py::len(lookups) == 0) {
      throw py::value_error("no lookups given");
    }
    for (py::handle item : lookups) {
      const py::tuple t = py::reinterpret_borrow<py::object>(item);
      if (t.size() != 3 && t.size() != 4) {
        throw py::value_error(
            "each lookup is (layer_id, ids, out) or (layer_id, ids, out, "
            "status)");
      }
      Add(t[0].cast<int64_t>(), t[1], t[2],
          t.size() == 4 ? py::object(t[3]) : py::object(py::none()), handle);
    }
    paths_.resize(requests_.size(), DevicePath::kRpc);
  }

  // Token lookups: `tokens` [B, T] (and `history` [B, h] or None) hashed
  // on the GPU for each layer of `layer_ids`, into outs[i] [B, T, H, D]
  // (statuses[i], when given, its status words).
  DeviceLookupPlan(py::object client, const std::vector<int64_t>& layer_ids,
                   py::handle tokens, const py::object& history,
                   const py::sequence& outs, const py::sequence& statuses,
                   const py::object& stream)
      : client_(client.cast<Client*>()),
        owner_(std::move(client)),
        tokens_(std::make_unique<DeviceTokens>()) {
    const uintptr_t handle = python::StreamHandle(stream);
    if (layer_ids.empty()) throw py::value_error("no layers given");
    if (py::len(outs) != layer_ids.size()) {
      throw py::value_error("outs has " + std::to_string(py::len(outs)) +
                            " arrays for " + std::to_string(layer_ids.size()) +
                            " layers");
    }
    if (py::len(statuses) != 0 && py::len(statuses) != layer_ids.size()) {
      throw py::value_error("statuses must be empty or one per layer");
    }
    std::vector<int64_t> shape;
    tokens_->tokens = Int64Array(tokens, "tokens", handle, &shape);
    if (shape.size() != 2) {
      throw py::value_error("tokens must be [B, T]; got shape " +
                            ShapeRepr(shape));
    }
    tokens_->batch = shape[0];
    tokens_->length = shape[1];
    if (!history.is_none()) {
      std::vector<int64_t> history_shape;
      tokens_->history = Int64Array(history, "history", handle, &history_shape);
      if (history_shape.size() != 2 || history_shape[0] != shape[0]) {
        throw py::value_error(
            "history must be [B = " + std::to_string(shape[0]) +
            ", h]; got shape " + ShapeRepr(history_shape));
      }
      tokens_->history_length = history_shape[1];
    }
    for (size_t i = 0; i < layer_ids.size(); ++i) {
      DeviceLookupRequest r;
      r.layer_id = layer_ids[i];
      r.tokens = tokens_.get();
      const std::vector<int64_t> out_shape = SetOut(&r, outs[i], handle);
      if (out_shape.size() != 4 || out_shape[0] != shape[0] ||
          out_shape[1] != shape[1]) {
        throw py::value_error("out has shape " + ShapeRepr(out_shape) +
                              "; tokens " + ShapeRepr(shape) +
                              " need [B, T, H, D]");
      }
      SetStatus(&r,
                py::len(statuses) != 0 ? py::object(statuses[i])
                                       : py::object(py::none()),
                handle);
      requests_.push_back(r);
    }
    paths_.resize(requests_.size(), DevicePath::kRpc);
  }

  void Launch() {
    absl::Status s;
    {
      py::gil_scoped_release nogil;
      std::lock_guard<std::mutex> lock(mu_);
      s = client_->LookupToDevice(requests_, paths_);
    }
    if (!s.ok()) Raise(s);
  }

  // Waits for the stream; the outcome of lookup `index` (all: -1, the first
  // failure raised).
  void Result(int index) {
    if (index >= static_cast<int>(requests_.size())) {
      throw py::index_error("no lookup " + std::to_string(index));
    }
    absl::Status s;
    {
      py::gil_scoped_release nogil;
      for (size_t i = 0; i < requests_.size() && s.ok(); ++i) {
        if (index < 0 || static_cast<size_t>(index) == i) {
          s = client_->DeviceLookupResult(requests_[i]);
        }
      }
    }
    if (!s.ok()) Raise(s);
  }

  std::vector<std::string> Paths() {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::string> names;
    for (DevicePath p : paths_) names.emplace_back(DevicePathName(p));
    return names;
  }

 private:
  // int64 values of `obj` (`what`): a CUDA array's own (int64 only), or
  // a host array-like's as a contiguous int64 copy; kept alive by the plan.
  const int64_t* Int64Array(py::handle obj, const char* what, uintptr_t stream,
                            std::vector<int64_t>* shape) {
    if (std::optional<CudaArray> dev = ReadCudaArray(obj, what, stream)) {
      if (dev->dtype != "int64") {
        throw py::type_error(std::string(what) + " must be int64; got " +
                             dev->dtype);
      }
      *shape = dev->shape;
      keep_.push_back(py::reinterpret_borrow<py::object>(obj));
      return reinterpret_cast<const int64_t*>(dev->ptr);
    }
    // Leaked on purpose: a static py::object would be released after the
    // interpreter is gone.
    static const py::handle np = py::module_::import("numpy").release();
    py::array host = np.attr("ascontiguousarray")(obj);
    const char kind = host.dtype().kind();
    if (kind != 'i' && kind != 'u') {
      throw py::type_error(std::string(what) + " must be integers; got " +
                           py::str(host.dtype()).cast<std::string>());
    }
    host = host.attr("astype")(np.attr("int64"), py::arg("copy") = false);
    shape->assign(host.shape(), host.shape() + host.ndim());
    const auto* data = static_cast<const int64_t*>(host.data());
    keep_.push_back(std::move(host));
    return data;
  }

  void Add(int64_t layer_id, py::handle ids, py::handle out,
           const py::object& status, uintptr_t stream) {
    DeviceLookupRequest r;
    r.layer_id = layer_id;
    r.id_form = form_.id_form;
    r.head_begin = form_.head_begin;
    r.head_end = form_.head_end;
    const bool entries = form_.id_form == IdForm::kEntries;
    std::vector<int64_t> ids_shape;
    r.ids = Int64Array(ids, "ids", stream, &ids_shape);
    if (ids_shape.size() != (entries ? 1u : 3u)) {
      throw py::value_error(std::string(entries ? "entries ids must be [n]"
                                                : "ids must be [B, L, H]") +
                            "; got shape " + ShapeRepr(ids_shape));
    }
    const std::vector<int64_t> out_shape = SetOut(&r, out, stream);
    if (out_shape.size() != ids_shape.size() + 1 ||
        !std::equal(ids_shape.begin(), ids_shape.end(), out_shape.begin())) {
      throw py::value_error("out has shape " + ShapeRepr(out_shape) + "; ids " +
                            ShapeRepr(ids_shape) +
                            (entries ? " need [n, D]" : " need [B, L, H, D]"));
    }
    r.num_ids = 1;
    for (int64_t d : ids_shape) r.num_ids *= d;
    SetStatus(&r, status, stream);
    requests_.push_back(r);
  }

  // r.out, out_bytes, output_dtype and stream from the CUDA array `out`;
  // returns its shape.
  std::vector<int64_t> SetOut(DeviceLookupRequest* r, py::handle out,
                              uintptr_t stream) {
    const std::optional<CudaArray> dev_out = ReadCudaArray(out, "out", stream);
    if (!dev_out) {
      throw py::type_error(
          "out must be a CUDA array (__cuda_array_interface__ or "
          "__dlpack__)");
    }
    const std::string out_dtype =
        dev_out->dtype == "uint16" ? "bfloat16" : dev_out->dtype;
    if (out_dtype != "float32" && out_dtype != "bfloat16" &&
        out_dtype != "float16" && out_dtype != "uint8") {
      throw py::type_error(
          "out must be float32, bfloat16, float16 or uint8; got " +
          dev_out->dtype);
    }
    keep_.push_back(py::reinterpret_borrow<py::object>(out));
    r->out = reinterpret_cast<void*>(dev_out->ptr);
    r->out_bytes = dev_out->nbytes();
    r->output_dtype = ParseDType(out_dtype);
    r->stream = reinterpret_cast<void*>(stream);
    return dev_out->shape;
  }

  void SetStatus(DeviceLookupRequest* r, const py::object& status,
                 uintptr_t stream) {
    if (!status.is_none()) {
      const std::optional<CudaArray> words =
          ReadCudaArray(status, "status", stream);
      if (!words || words->nbytes() < kDeviceStatusWords * sizeof(uint64_t) ||
          (words->dtype != "int64" && words->dtype != "uint64")) {
        throw py::type_error("status must be a CUDA array of " +
                             std::to_string(kDeviceStatusWords) + " (u)int64");
      }
      r->status = reinterpret_cast<uint64_t*>(words->ptr);
      keep_.push_back(status);
    }
  }

  Client* const client_;
  const py::object owner_;  // keeps client_ alive
  LookupOptions form_;      // id form and head slice of every lookup
  std::unique_ptr<DeviceTokens>
      tokens_;  // token lookups': requests_ point here
  std::vector<DeviceLookupRequest> requests_;
  std::vector<py::object> keep_;  // the arrays requests_ point into
  std::mutex mu_;
  std::vector<DevicePath> paths_;  // guarded by mu_ (GIL released)
};

}  // namespace

void BindDeviceLookups(py::module_& m, py::class_<Client>& client_class) {
  m.def("dlpack_info", &python::DlpackInfo, py::arg("capsule"));
  m.def(
      "cuda_array",
      [](py::handle obj, const std::string& what,
         uintptr_t stream) -> py::object {
        std::optional<CudaArray> a = ReadCudaArray(obj, what, stream);
        if (!a) return py::none();
        return py::make_tuple(a->ptr, py::tuple(py::cast(a->shape)), a->dtype,
                              a->device);
      },
      py::arg("obj"), py::arg("what") = "array", py::arg("stream") = 0);
  m.def("stream_handle", &python::StreamHandle, py::arg("stream"));
  m.attr("STATUS_WORDS") = kDeviceStatusWords;
  py::class_<DeviceLookupPlan>(m, "DeviceLookupPlan")
      .def(py::init<py::object, const py::sequence&, const py::object&,
                    const std::string&,
                    const std::optional<std::pair<int64_t, int64_t>>&>(),
           py::arg("client"), py::arg("lookups"), py::arg("stream"),
           py::arg("id_form") = "per_head", py::arg("heads") = py::none())
      .def(py::init<py::object, const std::vector<int64_t>&, py::handle,
                    const py::object&, const py::sequence&, const py::sequence&,
                    const py::object&>(),
           py::arg("client"), py::arg("layer_ids"), py::arg("tokens"),
           py::arg("history"), py::arg("outs"), py::arg("statuses"),
           py::arg("stream"))
      .def("launch", &DeviceLookupPlan::Launch)
      .def("result", &DeviceLookupPlan::Result, py::arg("index") = -1)
      .def("paths", &DeviceLookupPlan::Paths);
  client_class
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
