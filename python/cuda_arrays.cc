#include "python/cuda_arrays.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <utility>

namespace py = pybind11;

namespace engram::python {
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

constexpr int kDlCuda = 2, kDlCudaHost = 3;

// What a consumed capsule said.
struct DlpackTensor {
  uintptr_t ptr = 0;
  int device_type = 0;
  int device_id = 0;
  std::vector<int64_t> shape;
  std::optional<std::vector<int64_t>> strides;  // elements
  int code = 0, bits = 0, lanes = 0;
};

DlpackTensor Consume(const py::capsule& capsule) {
  if (std::string(capsule.name() == nullptr ? "" : capsule.name()) !=
      "dltensor") {
    throw py::value_error("not an unused DLPack capsule (\"dltensor\")");
  }
  auto* managed = static_cast<DLManagedTensor*>(capsule.get_pointer());
  const DLTensor& t = managed->dl_tensor;
  DlpackTensor out;
  out.ptr = reinterpret_cast<uintptr_t>(static_cast<uint8_t*>(t.data) +
                                        t.byte_offset);
  out.device_type = t.device.device_type;
  out.device_id = t.device.device_id;
  out.shape.assign(t.shape, t.shape + t.ndim);
  if (t.strides != nullptr) out.strides.emplace(t.strides, t.strides + t.ndim);
  out.code = t.dtype.code;
  out.bits = t.dtype.bits;
  out.lanes = t.dtype.lanes;
  PyCapsule_SetName(capsule.ptr(), "used_dltensor");
  if (managed->deleter != nullptr) managed->deleter(managed);
  return out;
}

const char* FromTypestr(const std::string& typestr) {
  static const std::pair<const char*, const char*> kTypestrs[] = {
      {"<f4", "float32"}, {"<f2", "float16"}, {"|u1", "uint8"},
      {"<u1", "uint8"},   {"<i8", "int64"},   {"<u8", "uint64"},
      {"<u2", "uint16"}};  // uint16: bfloat16 bits
  for (const auto& [t, name] : kTypestrs) {
    if (typestr == t) return name;
  }
  return nullptr;
}

const char* FromDlpack(int code, int bits) {
  static const struct {
    int code, bits;
    const char* name;
  } kTypes[] = {{2, 32, "float32"}, {2, 16, "float16"}, {4, 16, "bfloat16"},
                {1, 8, "uint8"},    {0, 64, "int64"},   {1, 64, "uint64"},
                {1, 16, "uint16"}};
  for (const auto& t : kTypes) {
    if (t.code == code && t.bits == bits) return t.name;
  }
  return nullptr;
}

// Strides in bytes describe a C-contiguous array (size-1 dims are free).
bool Contiguous(const std::vector<int64_t>& shape,
                const std::vector<int64_t>& byte_strides, int64_t itemsize) {
  int64_t expected = itemsize;
  for (size_t i = shape.size(); i-- > 0;) {
    if (shape[i] != 1 && byte_strides[i] != expected) return false;
    expected *= shape[i];
  }
  return true;
}

std::string Repr(py::handle obj) { return py::repr(obj).cast<std::string>(); }

// nullopt: no usable __cuda_array_interface__ (absent, raising, or a 2-byte
// void from an object that also speaks DLPack: PyTorch's bfloat16).
std::optional<CudaArray> FromInterface(py::handle obj,
                                       const std::string& what) {
  PyObject* raw = PyObject_GetAttrString(obj.ptr(), "__cuda_array_interface__");
  if (raw == nullptr) {
    if (PyErr_ExceptionMatches(PyExc_AttributeError) ||
        PyErr_ExceptionMatches(PyExc_TypeError) ||
        PyErr_ExceptionMatches(PyExc_RuntimeError)) {
      PyErr_Clear();
      return std::nullopt;
    }
    throw py::error_already_set();
  }
  const py::dict cai = py::reinterpret_steal<py::object>(raw);
  const std::string typestr = py::str(cai["typestr"]);
  const char* dtype = FromTypestr(typestr);
  if (dtype == nullptr && py::hasattr(obj, "__dlpack__")) return std::nullopt;
  if (dtype == nullptr) {
    throw py::type_error(what + " has element type " + Repr(cai["typestr"]) +
                         "; supported: ['float16', 'float32', 'int64', "
                         "'uint16', 'uint64', 'uint8']");
  }
  CudaArray a;
  for (py::handle n : cai["shape"]) a.shape.push_back(n.cast<int64_t>());
  a.dtype = dtype;
  if (cai.contains("strides") && !cai["strides"].is_none()) {
    std::vector<int64_t> strides;
    for (py::handle s : cai["strides"]) strides.push_back(s.cast<int64_t>());
    if (strides.size() != a.shape.size() ||
        !Contiguous(a.shape, strides, static_cast<int64_t>(ItemSize(dtype)))) {
      throw py::value_error(what + " must be C-contiguous");
    }
  }
  a.ptr = py::tuple(cai["data"])[0].cast<uintptr_t>();
  return a;
}

std::optional<CudaArray> FromDlpack(py::handle obj, const std::string& what,
                                    uintptr_t stream) {
  if (!py::hasattr(obj, "__dlpack__")) return std::nullopt;
  if (py::hasattr(obj, "__dlpack_device__")) {
    const py::tuple device = obj.attr("__dlpack_device__")();
    const int kind = device[0].cast<int>();
    if (kind != kDlCuda && kind != kDlCudaHost) return std::nullopt;  // host
  }
  // DLPack's stream numbering: 1 is the legacy default stream (0 is not
  // allowed); the producer orders its pending writes before our stream.
  const py::capsule capsule = obj.attr("__dlpack__")(
      py::arg("stream") = stream == 0 ? uintptr_t{1} : stream);
  const DlpackTensor t = Consume(capsule);
  if (t.device_type != kDlCuda && t.device_type != kDlCudaHost) {
    throw py::type_error(what + " is not CUDA memory (DLPack device type " +
                         std::to_string(t.device_type) + ")");
  }
  const char* dtype = FromDlpack(t.code, t.bits);
  if (dtype == nullptr || t.lanes != 1) {
    throw py::type_error(
        what + " has an unsupported DLPack element type (code " +
        std::to_string(t.code) + ", " + std::to_string(t.bits) + " bits)");
  }
  const int64_t itemsize = static_cast<int64_t>(ItemSize(dtype));
  if (t.strides) {
    std::vector<int64_t> bytes = *t.strides;
    for (int64_t& s : bytes) s *= itemsize;
    if (!Contiguous(t.shape, bytes, itemsize)) {
      throw py::value_error(what + " must be C-contiguous");
    }
  }
  return CudaArray{t.ptr, t.shape, dtype, t.device_id};
}

}  // namespace

int64_t CudaArray::count() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

size_t CudaArray::nbytes() const {
  return static_cast<size_t>(count()) * ItemSize(dtype);
}

size_t ItemSize(const std::string& dtype) {
  if (dtype == "float32") return 4;
  if (dtype == "int64" || dtype == "uint64") return 8;
  if (dtype == "uint8") return 1;
  return 2;  // float16, bfloat16, uint16
}

std::optional<CudaArray> ReadCudaArray(py::handle obj, const std::string& what,
                                       uintptr_t stream) {
  if (obj.is_none() || py::isinstance<py::array>(obj)) return std::nullopt;
  if (std::optional<CudaArray> a = FromInterface(obj, what)) return a;
  return FromDlpack(obj, what, stream);
}

uintptr_t StreamHandle(py::handle stream) {
  if (stream.is_none()) return 0;
  if (py::isinstance<py::int_>(stream)) return stream.cast<uintptr_t>();
  for (const char* attr : {"cuda_stream", "ptr", "handle"}) {
    py::object value = py::getattr(stream, attr, py::none());
    if (py::isinstance<py::int_>(value)) return value.cast<uintptr_t>();
  }
  throw py::type_error(
      "stream must be None, an int (cudaStream_t) or a CUDA stream object; "
      "got " +
      py::type::of(stream).attr("__name__").cast<std::string>());
}

py::dict DlpackInfo(const py::capsule& capsule) {
  const DlpackTensor t = Consume(capsule);
  py::dict info;
  info["ptr"] = t.ptr;
  info["device_type"] = t.device_type;
  info["device_id"] = t.device_id;
  info["shape"] = t.shape;
  info["strides"] = t.strides ? py::cast(*t.strides) : py::none();
  info["code"] = t.code;
  info["bits"] = t.bits;
  info["lanes"] = t.lanes;
  return info;
}

}  // namespace engram::python
