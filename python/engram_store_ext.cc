// _engram_store: the C++ client (engram::client) for Python. A thin layer:
// argument checking and numpy handling live in the pure-Python package
// (engram_store/__init__.py); this module moves bytes between the caller's
// buffers and the client with the GIL released, and turns a non-OK status
// into engram_store._engram_store.StatusError(code, message).
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "client/client.h"
#include "common/version.h"
#include "hash/engram_hash.h"
#include "hash/numpy_random.h"
#include "python/ext_common.h"

namespace py = pybind11;

namespace engram {
namespace {

py::dict Describe(const LayerDescription& d) {
  py::dict info;
  info["layer_id"] = d.layer_id;
  info["table_vocab_sizes"] = d.layout.table_vocab_sizes;
  info["embedding_dim"] = d.layout.embedding_dim;
  info["dtype"] = std::string(DTypeName(d.layout.dtype));
  if (d.layout.quant.enabled()) {
    py::dict quant;
    quant["format"] = std::string(QuantFormatName(d.layout.quant.format));
    quant["scale"] = std::string(QuantScaleName(d.layout.quant.format));
    quant["block"] = d.layout.quant.block;
    info["quant"] = quant;
  } else {
    info["quant"] = py::none();
  }
  info["store_keys"] = d.store_keys;
  info["bytes"] = d.bytes;
  info["version"] = d.version;
  return info;
}

// Contiguous bytes of a buffer the caller keeps alive.
std::span<uint8_t> Bytes(const py::buffer& b, bool writable) {
  py::buffer_info info = b.request(writable);
  return {static_cast<uint8_t*>(info.ptr),
          static_cast<size_t>(info.size * info.itemsize)};
}

ClientOptions Options(double timeout_s, int num_channels, bool direct_reads,
                      const py::dict& security) {
  ClientOptions o;
  o.timeout = absl::Seconds(timeout_s);
  o.num_channels = num_channels;
  o.direct_reads = direct_reads;
  auto text = [&security](const char* key) {
    return security.contains(key) && !security[key].is_none()
               ? security[key].cast<std::string>()
               : std::string();
  };
  o.tls = security.contains("tls") && security["tls"].cast<bool>();
  o.tls_ca_file = text("tls_ca_file");
  o.tls_cert_file = text("tls_cert_file");
  o.tls_key_file = text("tls_key_file");
  o.tls_server_name = text("tls_server_name");
  o.token = text("token");
  return o;
}

// One lookup_async in flight, shared by the client's completion callback
// and the Python handle (PendingLookup). The completion takes the GIL only
// when Python asked to be told (a done-callback or a waiter) or the handle
// is already gone (its Python objects must be released): a caller that just
// waits for the result never competes for the GIL with the thread computing
// in Python. Thread-safe; the Python objects are touched under the GIL.
struct AsyncLookup {
  absl::Mutex mu;
  bool done ABSL_GUARDED_BY(mu) = false;
  bool handle_gone ABSL_GUARDED_BY(mu) = false;
  absl::Status status ABSL_GUARDED_BY(mu);
  py::object notify ABSL_GUARDED_BY(mu);  // called once, under the GIL
  // The caller's arrays the client reads and writes until `done`.
  py::object ids, out;
  std::vector<int64_t> shape;
};

// Lookups in flight in this process, so that interpreter exit can wait for
// them (a completion must not reach a Python being torn down).
absl::Mutex in_flight_mu;
int64_t in_flight ABSL_GUARDED_BY(in_flight_mu) = 0;
bool NoneInFlight(int64_t* n) { return *n == 0; }

void Complete(const std::shared_ptr<AsyncLookup>& call, absl::Status s) {
  py::object notify;
  bool release;
  {
    absl::MutexLock lock(&call->mu);
    call->done = true;
    call->status = std::move(s);
    notify = std::move(call->notify);
    release = call->handle_gone;
  }
  if (notify || release) {
    if (!Py_IsInitialized() || _Py_IsFinalizing()) {
      notify.release();  // too late for Python: leak, never touch it
      call->ids.release();
      call->out.release();
    } else {
      py::gil_scoped_acquire gil;
      if (notify) {
        try {
          notify();
        } catch (py::error_already_set& e) {
          e.discard_as_unraisable("engram_store lookup_async");
        }
        notify = py::object();
      }
      if (release) {
        call->ids = py::object();
        call->out = py::object();
      }
    }
  }
  absl::MutexLock lock(&in_flight_mu);
  --in_flight;
}

// The Python side of an AsyncLookup; destroyed under the GIL.
class PendingLookup {
 public:
  explicit PendingLookup(std::shared_ptr<AsyncLookup> call)
      : call_(std::move(call)) {}
  ~PendingLookup() {
    absl::MutexLock lock(&call_->mu);
    if (call_->done) {
      call_->ids = py::object();
      call_->out = py::object();
    } else {
      call_->handle_gone = true;  // the completion releases them
    }
  }

  // Waits (GIL released) up to `timeout_s` (None: forever); true once done.
  bool Wait(std::optional<double> timeout_s) {
    py::gil_scoped_release nogil;
    absl::MutexLock lock(&call_->mu);
    const absl::Condition done(&call_->done);
    if (!timeout_s) {
      call_->mu.Await(done);
      return true;
    }
    return call_->mu.AwaitWithTimeout(done, absl::Seconds(*timeout_s));
  }
  bool Done() {
    absl::MutexLock lock(&call_->mu);
    return call_->done;
  }
  // (code, message) once done.
  py::tuple Status() {
    absl::MutexLock lock(&call_->mu);
    return py::make_tuple(static_cast<int>(call_->status.code()),
                          std::string(call_->status.message()));
  }
  // Has `fn` called (under the GIL, on the completing thread) when the
  // lookup completes; false, and nothing registered, if it already has.
  bool OnDone(py::object fn) {
    absl::MutexLock lock(&call_->mu);
    if (call_->done) return false;
    call_->notify = std::move(fn);
    return true;
  }

 private:
  std::shared_ptr<AsyncLookup> call_;
};

// The Status answer as nested dicts and lists (Client.status()).
py::dict StatusDict(const ServerStatus& s) {
  py::dict d;
  d["version"] = s.version;
  d["uptime_seconds"] = s.uptime_seconds;
  d["shard_index"] = s.shard_index;
  d["shards"] = s.shards;
  d["ready"] = s.ready;
  d["not_ready_reason"] = s.not_ready_reason;
  d["memory_used_bytes"] = s.memory_used_bytes;
  d["memory_limit_bytes"] = s.memory_limit_bytes;
  d["gpu_memory_used_bytes"] = s.gpu_memory_used_bytes;
  d["gpu_memory_limit_bytes"] = s.gpu_memory_limit_bytes;
  py::list layers;
  for (const ServerStatus::Layer& l : s.layers) {
    py::dict layer;
    layer["layer_id"] = l.description.layer_id;
    layer["bytes"] = l.description.bytes;
    layer["version"] = l.description.version;
    layer["pinned"] = l.pinned;
    layer["gpu_resident"] = l.gpu_resident;
    layer["stored_bytes"] = l.stored_bytes;
    layer["resident_bytes"] = l.resident_bytes;
    layer["token_model"] =
        l.token_model == ServerStatus::Layer::TokenModel::kCurrent ? "current"
        : l.token_model == ServerStatus::Layer::TokenModel::kStale ? "stale"
                                                                   : "none";
    layers.append(layer);
  }
  d["layers"] = layers;
  py::dict calls;
  for (const ServerStatus::Calls& c : s.calls) {
    py::dict counts;
    counts["calls"] = c.calls;
    counts["errors"] = c.errors;
    calls[py::str(c.rpc)] = counts;
  }
  d["calls"] = calls;
  py::dict latency;
  latency["count"] = s.lookup_latency.count;
  latency["sum_seconds"] = s.lookup_latency.sum_seconds;
  latency["p50_seconds"] = LatencyQuantile(s.lookup_latency, 0.5);
  latency["p99_seconds"] = LatencyQuantile(s.lookup_latency, 0.99);
  d["lookup_latency"] = latency;
  d["lookup_rows"] = s.lookup_rows;
  d["lookup_bytes"] = s.lookup_bytes;
  d["populate_bytes"] = s.populate_bytes;
  py::list loads;
  for (const ServerStatus::Load& l : s.loads) {
    py::dict load;
    load["manifest"] = l.manifest;
    load["layers_total"] = l.layers_total;
    load["layers_done"] = l.layers_done;
    load["bytes_total"] = l.bytes_total;
    load["bytes_done"] = l.bytes_done;
    load["seconds"] = l.seconds;
    loads.append(load);
  }
  d["loads"] = loads;
  d["peers_up"] = s.peers_up;
  d["recovery_layers_pending"] = s.recovery_layers_pending;
  d["pending_response_bytes"] = s.pending_response_bytes;
  py::dict process;
  process["resident_bytes"] = s.resident_bytes;
  process["cpu_seconds"] = s.cpu_seconds;
  process["open_fds"] = s.open_fds;
  process["max_fds"] = s.max_fds;
  process["start_time_seconds"] = s.start_time_seconds;
  d["process"] = process;
  return d;
}

}  // namespace
}  // namespace engram

PYBIND11_MODULE(_engram_store, m) {
  using namespace engram;
  m.doc() = "engram-store C++ client binding (use the engram_store package)";
  static py::exception<StatusException> status_error(m, "StatusError");
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const StatusException& e) {
      py::tuple args = py::make_tuple(static_cast<int>(e.status.code()),
                                      std::string(e.status.message()));
      PyErr_SetObject(status_error.ptr(), args.ptr());
    }
  });

  m.attr("__version__") = Version();
  // The multipliers' generator, for tests against numpy itself.
  m.def(
      "numpy_integers",
      [](uint64_t seed, int64_t high, int n) {
        if (high < 1 || n < 0) throw py::value_error("high >= 1, n >= 0");
        return numpy_random::Integers(seed, high, n);
      },
      py::arg("seed"), py::arg("high"), py::arg("n"));
  py::class_<EngramHasher>(m, "EngramHasher")
      .def(py::init([](const std::string& config, const std::string& map) {
             return Unwrap(EngramHasher::Load(config, map));
           }),
           py::arg("config_path"), py::arg("token_map_path"))
      .def_property_readonly("ids_per_position",
                             &EngramHasher::ids_per_position)
      .def_property_readonly(
          "layer_ids",
          [](const EngramHasher& h) { return h.config().layer_ids; })
      .def("multipliers",
           [](const EngramHasher& h, int64_t layer) {
             auto m = h.multipliers(layer);
             return std::vector<int64_t>(m.begin(), m.end());
           })
      .def("table_sizes",
           [](const EngramHasher& h, int64_t layer) {
             auto s = h.table_sizes(layer);
             return std::vector<int64_t>(s.begin(), s.end());
           })
      .def(
          "hash_into",
          [](const EngramHasher& h, int64_t layer, const py::buffer& tokens,
             int64_t batch, const py::buffer& history, bool fused,
             const py::buffer& out, bool compressed, int64_t history_length) {
            std::span<uint8_t> t = Bytes(tokens, false);
            std::span<uint8_t> hist = Bytes(history, false);
            std::span<uint8_t> o = Bytes(out, true);
            auto ids = [](std::span<uint8_t> b) {
              return std::span<int64_t>(reinterpret_cast<int64_t*>(b.data()),
                                        b.size() / sizeof(int64_t));
            };
            absl::Status s;
            {
              py::gil_scoped_release nogil;
              s = compressed
                      ? h.HashCompressed(layer, ids(t), batch, history_length,
                                         fused, ids(o))
                      : h.Hash(layer, ids(t), batch, ids(hist), fused, ids(o));
            }
            if (!s.ok()) Raise(s);
          },
          py::arg("layer_id"), py::arg("tokens"), py::arg("batch"),
          py::arg("history"), py::arg("fused"), py::arg("out"),
          py::arg("compressed"), py::arg("history_length"));

  py::class_<PendingLookup>(m, "PendingLookup")
      .def("wait", &PendingLookup::Wait, py::arg("timeout_s"))
      .def("done", &PendingLookup::Done)
      .def("status", &PendingLookup::Status)
      .def("on_done", &PendingLookup::OnDone, py::arg("fn"));
  m.def(
      "wait_for_lookups",
      [](double timeout_s) {
        // Until no lookup_async is in flight (or the timeout); for exit.
        py::gil_scoped_release nogil;
        absl::MutexLock lock(&in_flight_mu);
        return in_flight_mu.AwaitWithTimeout(
            absl::Condition(&NoneInFlight, &in_flight),
            absl::Seconds(timeout_s));
      },
      py::arg("timeout_s"));

  py::class_<Client> client_class(m, "Client");
  BindDeviceLookups(m, client_class);
  client_class
      .def_static(
          "connect",
          [](const std::string& address, double timeout_s, int num_channels,
             bool direct_reads, const py::dict& security) {
            return Unwrap(Client::Connect(
                address,
                Options(timeout_s, num_channels, direct_reads, security)));
          },
          py::arg("address"), py::arg("timeout_s"), py::arg("num_channels"),
          py::arg("direct_reads"), py::arg("security"))
      .def_static(
          "connect_cluster",
          [](const std::vector<std::string>& shards, int replication,
             double timeout_s, int num_channels, bool direct_reads,
             const py::dict& security) {
            return Unwrap(Client::ConnectCluster(
                shards, replication,
                Options(timeout_s, num_channels, direct_reads, security)));
          },
          py::arg("shards"), py::arg("replication"), py::arg("timeout_s"),
          py::arg("num_channels"), py::arg("direct_reads"), py::arg("security"))
      .def(
          "populate",
          [](Client& c, int64_t layer_id, const std::vector<py::buffer>& tables,
             const std::vector<int64_t>& vocab, int64_t dim,
             const std::string& dtype, bool replace,
             std::optional<py::function> progress,
             std::optional<std::tuple<std::string, std::string, int64_t>>
                 quant) {
            LayerLayout layout{vocab, dim, *ParseDType(dtype)};
            if (quant) {
              layout.quant = Unwrap(QuantFromNames(std::get<0>(*quant),
                                                   std::get<1>(*quant),
                                                   std::get<2>(*quant)));
            }
            std::vector<std::span<const uint8_t>> spans;
            for (const py::buffer& t : tables) spans.push_back(Bytes(t, false));
            PopulateProgress on_progress = nullptr;
            if (progress) {
              on_progress = [&progress](uint64_t sent, uint64_t total) {
                py::gil_scoped_acquire gil;
                (*progress)(sent, total);
              };
            }
            absl::StatusOr<LayerDescription> d;
            {
              py::gil_scoped_release nogil;
              d = replace ? c.Replace(layer_id, layout, spans, on_progress)
                          : c.Populate(layer_id, layout, spans, on_progress);
            }
            return Describe(Unwrap(std::move(d)));
          },
          py::arg("layer_id"), py::arg("tables"), py::arg("vocab"),
          py::arg("dim"), py::arg("dtype"), py::arg("replace"),
          py::arg("progress"), py::arg("quant"))
      .def(
          "lookup_into",
          [](Client& c, int64_t layer_id, const py::buffer& ids,
             const std::vector<int64_t>& shape, const py::buffer& out,
             std::optional<std::string> output_dtype,
             const std::string& id_form,
             std::optional<std::pair<int64_t, int64_t>> heads) {
            std::span<uint8_t> id_bytes = Bytes(ids, false);
            std::span<uint8_t> out_bytes = Bytes(out, true);
            const LookupOptions options =
                ParseLookupOptions(output_dtype, id_form, heads);
            absl::Status s;
            {
              py::gil_scoped_release nogil;
              s = c.Lookup(layer_id,
                           {reinterpret_cast<const int64_t*>(id_bytes.data()),
                            id_bytes.size() / sizeof(int64_t)},
                           shape, out_bytes, options);
            }
            if (!s.ok()) Raise(s);
          },
          py::arg("layer_id"), py::arg("ids"), py::arg("shape"), py::arg("out"),
          py::arg("output_dtype"), py::arg("id_form") = "per_head",
          py::arg("heads") = py::none())
      .def(
          "lookup_many_into",
          [](Client& c, const py::list& lookups) {
            // Each entry: (layer_id, ids, shape, out, output_dtype, id_form,
            // heads), as lookup_into takes them.
            std::vector<py::buffer> keep;  // buffers outlive the call
            std::vector<std::vector<int64_t>> shapes;
            std::vector<LookupSpec> specs;
            shapes.reserve(lookups.size());
            for (const py::handle& item : lookups) {
              auto t = item.cast<py::tuple>();
              if (t.size() != 7) {
                throw py::value_error("lookup_many_into takes 7-tuples");
              }
              LookupSpec spec;
              spec.layer_id = t[0].cast<int64_t>();
              keep.push_back(t[1].cast<py::buffer>());
              std::span<uint8_t> id_bytes = Bytes(keep.back(), false);
              spec.ids = {reinterpret_cast<const int64_t*>(id_bytes.data()),
                          id_bytes.size() / sizeof(int64_t)};
              shapes.push_back(t[2].cast<std::vector<int64_t>>());
              spec.shape = shapes.back();
              keep.push_back(t[3].cast<py::buffer>());
              spec.output = Bytes(keep.back(), true);
              spec.options = ParseLookupOptions(
                  t[4].cast<std::optional<std::string>>(),
                  t[5].cast<std::string>(),
                  t[6].cast<std::optional<std::pair<int64_t, int64_t>>>());
              specs.push_back(spec);
            }
            absl::Status s;
            {
              py::gil_scoped_release nogil;
              s = c.LookupMany(specs);
            }
            if (!s.ok()) Raise(s);
          },
          py::arg("lookups"))
      .def("server_info",
           [](Client& c) {
             absl::StatusOr<Client::ServerInfo> info;
             {
               py::gil_scoped_release nogil;
               info = c.GetServerInfo();
             }
             if (!info.ok()) Raise(info.status());
             py::dict d;
             d["version"] = info->version;
             d["uptime_seconds"] = info->uptime_seconds;
             d["shard_index"] = info->shard_index;
             d["shards"] = info->shards;
             d["layers"] = info->layers;
             return d;
           })
      .def("status",
           [](Client& c) {
             absl::StatusOr<ServerStatus> st;
             {
               py::gil_scoped_release nogil;
               st = c.GetStatus();
             }
             if (!st.ok()) Raise(st.status());
             return StatusDict(*st);
           })
      .def(
          "lookup_tokens_into",
          [](Client& c, const std::vector<int64_t>& layer_ids,
             const py::buffer& tokens, const std::vector<int64_t>& shape,
             const py::buffer& history, const py::list& outs,
             std::optional<std::string> output_dtype) {
            std::span<uint8_t> t = Bytes(tokens, false);
            std::span<uint8_t> h = Bytes(history, false);
            std::vector<py::buffer> keep;
            std::vector<std::span<uint8_t>> spans;
            for (const py::handle& o : outs) {
              keep.push_back(o.cast<py::buffer>());
              spans.push_back(Bytes(keep.back(), true));
            }
            const std::optional<DType> dtype = ParseDType(output_dtype);
            absl::Status s;
            {
              py::gil_scoped_release nogil;
              s = c.LookupTokens(
                  layer_ids,
                  {reinterpret_cast<const int64_t*>(t.data()), t.size() / 8},
                  shape,
                  {reinterpret_cast<const int64_t*>(h.data()), h.size() / 8},
                  spans, dtype);
            }
            if (!s.ok()) Raise(s);
          },
          py::arg("layer_ids"), py::arg("tokens"), py::arg("shape"),
          py::arg("history"), py::arg("outs"), py::arg("output_dtype"))
      .def(
          "lookup_into_async",
          [](Client& c, int64_t layer_id, py::buffer ids,
             std::vector<int64_t> shape, py::buffer out,
             std::optional<std::string> output_dtype,
             const std::string& id_form,
             std::optional<std::pair<int64_t, int64_t>> heads) {
            std::span<uint8_t> id_bytes = Bytes(ids, false);
            std::span<uint8_t> out_bytes = Bytes(out, true);
            const LookupOptions options =
                ParseLookupOptions(output_dtype, id_form, heads);
            auto call = std::make_shared<AsyncLookup>();
            call->ids = ids;
            call->out = out;
            call->shape = std::move(shape);
            auto handle = std::make_unique<PendingLookup>(call);
            {
              absl::MutexLock lock(&in_flight_mu);
              ++in_flight;
            }
            py::gil_scoped_release nogil;
            c.LookupAsync(layer_id,
                          {reinterpret_cast<const int64_t*>(id_bytes.data()),
                           id_bytes.size() / sizeof(int64_t)},
                          call->shape, out_bytes, options,
                          [call](absl::Status s) { Complete(call, s); });
            return handle;
          },
          py::arg("layer_id"), py::arg("ids"), py::arg("shape"), py::arg("out"),
          py::arg("output_dtype"), py::arg("id_form") = "per_head",
          py::arg("heads") = py::none())
      .def(
          "bench_lookups",
          [](Client& c, int64_t layer_id, const py::buffer& ids,
             const std::vector<int64_t>& shape, const py::buffer& out,
             double seconds, bool async) {
            // The C++ client's own loop, for benchmarks: the floor the
            // Python call path is measured against in the same run
            // (`async`: LookupAsync, waited for, one at a time).
            std::span<uint8_t> id_bytes = Bytes(ids, false);
            std::span<uint8_t> out_bytes = Bytes(out, true);
            const std::span<const int64_t> id_span(
                reinterpret_cast<const int64_t*>(id_bytes.data()),
                id_bytes.size() / sizeof(int64_t));
            py::gil_scoped_release nogil;
            int64_t calls = 0;
            const absl::Time end = absl::Now() + absl::Seconds(seconds);
            while (absl::Now() < end) {
              if (absl::Status s =
                      async ? c.LookupAsync(layer_id, id_span, shape, out_bytes)
                                  .get()
                            : c.Lookup(layer_id, id_span, shape, out_bytes);
                  !s.ok()) {
                Raise(s);
              }
              ++calls;
            }
            return calls;
          },
          py::arg("layer_id"), py::arg("ids"), py::arg("shape"), py::arg("out"),
          py::arg("seconds"), py::arg("async") = false)
      .def(
          "remove",
          [](Client& c, int64_t layer_id, bool force) {
            py::gil_scoped_release nogil;
            return Unwrap(c.Remove(layer_id, force));
          },
          py::arg("layer_id"), py::arg("force"))
      .def("describe",
           [](Client& c, int64_t layer_id) {
             absl::StatusOr<LayerDescription> d;
             {
               py::gil_scoped_release nogil;
               d = c.DescribeLayer(layer_id);
             }
             return Describe(Unwrap(std::move(d)));
           })
      .def("list_layers",
           [](Client& c) {
             absl::StatusOr<std::vector<LayerDescription>> l;
             {
               py::gil_scoped_release nogil;
               l = c.ListLayers();
             }
             py::list out;
             for (const LayerDescription& d : Unwrap(std::move(l)))
               out.append(Describe(d));
             return out;
           })
      .def("load",
           [](Client& c, const std::string& manifest) {
             absl::StatusOr<std::vector<LayerDescription>> l;
             {
               py::gil_scoped_release nogil;
               l = c.Load(manifest);
             }
             py::list out;
             for (const LayerDescription& d : Unwrap(std::move(l)))
               out.append(Describe(d));
             return out;
           })
      .def(
          "health",
          [](Client& c, const std::string& service) {
            py::gil_scoped_release nogil;
            return c.CheckHealth(service).ok();
          },
          py::arg("service") = "");
}
