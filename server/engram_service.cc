#include "server/engram_service.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/layout.h"
#include "common/status_context.h"
#include "proto/wire_format.h"
#include "server/log.h"
#include "server/lookup_request.h"
#include "server/populate_reactor.h"
#include "store/gather.h"

namespace engram {
namespace {

using Clock = std::chrono::steady_clock;

void FreeBuffer(void* p) { std::free(p); }

// Response memory: pinned from the GPU tier when it serves the lookup (the
// copy back from the device then runs at full speed), else malloc.
struct ResponseBuffer {
  uint8_t* data = nullptr;
  void (*destroy)(void*) = nullptr;
  void* user_data = nullptr;
};

ResponseBuffer AllocateResponse(GpuTier* gpu, size_t bytes) {
  ResponseBuffer b;
  if (gpu != nullptr) {
    void* token = nullptr;
    b.data = gpu->AllocResponse(bytes, &token);
    if (b.data != nullptr) {
      b.destroy = &GpuTier::FreeResponse;
      b.user_data = token;
      return b;
    }
  }
  b.data = static_cast<uint8_t*>(std::malloc(bytes));
  b.destroy = &FreeBuffer;
  b.user_data = b.data;
  return b;
}

// Logs the first GPU failures and then one in a thousand, so a broken
// device cannot flood the log.
void LogGpuFallback(const absl::Status& status) {
  static std::atomic<int64_t> count{0};
  const int64_t n = count.fetch_add(1, std::memory_order_relaxed);
  if (n < 10 || n % 1000 == 0) {
    LogWarning(absl::StrCat("GPU lookup failed, served by the CPU instead (",
                            n + 1, " so far): ", status.ToString()));
  }
}

// Parses a raw request as `T` (the ByteBuffer copy shares its slices;
// Deserialize consumes it): INVALID_ARGUMENT naming the message type.
template <typename T>
absl::Status ParseRequest(const grpc::ByteBuffer& request, T* message) {
  grpc::ByteBuffer parse_copy(request);
  if (grpc::SerializationTraits<T>::Deserialize(&parse_copy, message).ok()) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "the request does not parse as ", T::descriptor()->full_name()));
}

// `bytes` as int64s: in place when 8-byte aligned, else copied into
// `copy`.
std::span<const int64_t> AlignedInt64s(const std::string& bytes,
                                       std::vector<int64_t>* copy) {
  const size_t n = bytes.size() / sizeof(int64_t);
  if (reinterpret_cast<uintptr_t>(bytes.data()) % alignof(int64_t) == 0) {
    return {reinterpret_cast<const int64_t*>(bytes.data()), n};
  }
  copy->resize(n);
  std::memcpy(copy->data(), bytes.data(), n * sizeof(int64_t));
  return *copy;
}

// Where to write int64s into `bytes` (sized already): in place when 8-byte
// aligned, else into `copy` (the caller copies it back).
std::span<int64_t> MutableAlignedInt64s(std::string* bytes,
                                        std::vector<int64_t>* copy) {
  const size_t n = bytes->size() / sizeof(int64_t);
  if (reinterpret_cast<uintptr_t>(bytes->data()) % alignof(int64_t) == 0) {
    return {reinterpret_cast<int64_t*>(bytes->data()), n};
  }
  copy->resize(n);
  return *copy;
}

}  // namespace

EngramService::EngramService(const Parts& parts)
    : layers_(parts.layers),
      budget_(parts.budget),
      pool_(parts.pool),
      metrics_(parts.metrics),
      gpu_(parts.gpu),
      limits_(parts.limits),
      cluster_(parts.cluster),
      exporter_(parts.exporter),
      watchdog_(parts.watchdog),
      pending_(parts.pending),
      loader_(parts.loader),
      auth_(parts.auth),
      hashes_(parts.hashes),
      server_status_(parts.server_status) {}

grpc::ServerReadReactor<v1::PopulateRequest>* EngramService::Populate(
    grpc::CallbackServerContext* context, v1::PopulateResponse* response) {
  if (absl::StatusOr<Caller> caller =
          Authorize(auth_, *context, Method::kPopulate);
      !caller.ok()) {
    metrics_->RecordCall(Method::kPopulate,
                         static_cast<grpc::StatusCode>(caller.status().code()));
    return new RefusedStream<v1::PopulateRequest>(
        ToGrpcStatus(caller.status()));
  }
  if (cluster_ != nullptr) return cluster_->NewPopulate(context, response);
  PopulateEnv env;
  env.layers = layers_;
  env.budget = budget_;
  env.metrics = metrics_;
  env.pool = pool_;
  env.gpu = gpu_;
  env.watchdog = watchdog_;
  env.exporter = exporter_;
  env.pin_memory = limits_.pin_memory;
  env.data_dir = limits_.data_dir;
  return NewPopulateReactor(context, response, env);
}

grpc::ServerUnaryReactor* EngramService::Refuse(
    grpc::CallbackServerContext* context, Method rpc, Caller* caller) {
  absl::StatusOr<Caller> who = Authorize(auth_, *context, rpc);
  if (who.ok()) {
    if (caller != nullptr) *caller = *std::move(who);
    return nullptr;
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  Finish(reactor, rpc, who.status());
  return reactor;
}

void EngramService::Finish(grpc::ServerUnaryReactor* reactor, Method rpc,
                           const absl::Status& status) {
  metrics_->RecordCall(rpc, static_cast<grpc::StatusCode>(status.code()));
  reactor->Finish(ToGrpcStatus(status));
}

grpc::ServerUnaryReactor* EngramService::Lookup(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  if (auto* refused = Refuse(context, Method::kLookup)) return refused;
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auto call = std::make_shared<LookupCall>();
  call->start = Clock::now();
  if (absl::Status s = ParseRequest(*request, &call->request); !s.ok()) {
    Finish(reactor, Method::kLookup, s);
    return reactor;
  }
  if (absl::Status s = PrepareLookup(*layers_, limits_, call.get()); !s.ok()) {
    Finish(reactor, Method::kLookup, s);
    return reactor;
  }
  if (call->request.as_values()) {
    ServeValues(*context, reactor, response, call);
  } else {
    ServeRows(*context, reactor, response, call);
  }
  return reactor;
}

grpc::ServerUnaryReactor* EngramService::LookupMany(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  if (auto* refused = Refuse(context, Method::kLookupMany)) return refused;
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const auto start = Clock::now();
  v1::LookupManyRequest many;
  if (absl::Status s = ParseRequest(*request, &many); !s.ok()) {
    Finish(reactor, Method::kLookupMany, s);
    return reactor;
  }
  const int count = many.lookups_size();
  if (count == 0 || count > kMaxLookupsPerCall) {
    Finish(reactor, Method::kLookupMany,
           absl::InvalidArgumentError(absl::StrCat("LookupMany takes 1 to ",
                                                   kMaxLookupsPerCall,
                                                   " lookups; got ", count)));
    return reactor;
  }
  std::vector<std::shared_ptr<LookupCall>> calls;
  for (int i = 0; i < count; ++i) {
    auto call = std::make_shared<LookupCall>();
    call->start = start;
    call->request = std::move(*many.mutable_lookups(i));
    calls.push_back(std::move(call));
  }
  ServeMany(*context, reactor, response, Method::kLookupMany, calls, nullptr);
  return reactor;
}

grpc::ServerUnaryReactor* EngramService::LookupTokens(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  if (auto* refused = Refuse(context, Method::kLookupTokens)) return refused;
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const auto start = Clock::now();
  v1::LookupTokensRequest req;
  if (absl::Status s = ParseRequest(*request, &req); !s.ok()) {
    Finish(reactor, Method::kLookupTokens, s);
    return reactor;
  }
  absl::Status s = [&]() -> absl::Status {
    if (req.layer_ids_size() == 0 ||
        req.layer_ids_size() > kMaxLookupsPerCall) {
      return absl::InvalidArgumentError(
          absl::StrCat("LookupTokens takes 1 to ", kMaxLookupsPerCall,
                       " layer_ids; got ", req.layer_ids_size()));
    }
    if (req.shape_size() != 2 || req.shape(0) < 1 || req.shape(1) < 1 ||
        req.shape(0) > limits_.max_lookup_rows ||
        req.shape(1) > limits_.max_lookup_rows) {
      return absl::InvalidArgumentError(
          "shape must be [B, T] with B, T >= 1 (token ids of B sequences)");
    }
    const int64_t batch = req.shape(0), tokens = req.shape(1);
    if (req.tokens().size() != static_cast<size_t>(batch * tokens * 8)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokens has ", req.tokens().size(), " bytes; [", batch,
                       ", ", tokens, "] int64 ids need ", batch * tokens * 8));
    }
    if (req.history_length() < 0 ||
        req.history().size() !=
            static_cast<size_t>(batch * req.history_length() * 8)) {
      return absl::InvalidArgumentError(
          absl::StrCat("history has ", req.history().size(), " bytes; [", batch,
                       ", ", req.history_length(), "] int64 ids need ",
                       batch * std::max(0, req.history_length()) * 8));
    }
    return absl::OkStatus();
  }();
  if (!s.ok()) {
    Finish(reactor, Method::kLookupTokens, s);
    return reactor;
  }
  const int64_t batch = req.shape(0), tokens = req.shape(1);
  // The request's own bytes when they are 8-byte aligned (a parsed
  // request's strings are heap blocks): no copy on the decode path.
  std::vector<int64_t> token_copy, history_copy;
  std::span<const int64_t> token_ids = AlignedInt64s(req.tokens(), &token_copy);
  std::span<const int64_t> history =
      AlignedInt64s(req.history(), &history_copy);
  std::vector<std::shared_ptr<LookupCall>> calls;
  std::vector<TokenHashes::Entry> hashes;
  for (int i = 0; i < req.layer_ids_size(); ++i) {
    const int64_t layer = req.layer_ids(i);
    std::optional<TokenHashes::Entry> entry =
        hashes_ != nullptr ? hashes_->Find(layer) : std::nullopt;
    if (!entry) {
      Finish(reactor, Method::kLookupTokens,
             absl::FailedPreconditionError(absl::StrCat(
                 "lookups[", i, "]: layer ", layer,
                 " has no model hash: load it with a manifest whose "
                 "\"model\" names config.json and the token map "
                 "(docs/tokens.md)")));
      return reactor;
    }
    const int per = entry->hasher->ids_per_position();
    auto call = std::make_shared<LookupCall>();
    call->start = start;
    call->request.set_layer_id(layer);
    for (int64_t d : {batch, tokens, static_cast<int64_t>(per)})
      call->request.add_shape(d);
    // Hashed straight into the request the lookup reads, as per-head ids
    // (column h in table h): no fused offsets to add and take off again.
    std::string* row_ids = call->request.mutable_row_ids();
    row_ids->resize(batch * tokens * per * sizeof(int64_t));
    std::vector<int64_t> ids_copy;
    std::span<int64_t> ids = MutableAlignedInt64s(row_ids, &ids_copy);
    if (absl::Status h = entry->hasher->Hash(entry->engram_layer, token_ids,
                                             batch, history, false, ids);
        !h.ok()) {
      Finish(reactor, Method::kLookupTokens, h);
      return reactor;
    }
    if (!ids_copy.empty()) {
      std::memcpy(row_ids->data(), ids_copy.data(), row_ids->size());
    }
    call->request.set_output_dtype(req.output_dtype());
    call->token_model = entry->hasher->TokenModel(entry->engram_layer);
    calls.push_back(std::move(call));
    hashes.push_back(*std::move(entry));
  }
  // The tables must still be the ones the hash addresses: a layer
  // populated or replaced since (another version) is refused, not misread.
  ServeMany(*context, reactor, response, Method::kLookupTokens, calls,
            [hashes](int i, const LookupCall& call) -> absl::Status {
              return TokenHashes::CheckCurrent(hashes[i], *call.layer);
            });
  return reactor;
}

void EngramService::ServeMany(
    const grpc::CallbackServerContext& context,
    grpc::ServerUnaryReactor* reactor, grpc::ByteBuffer* response,
    Method method, const std::vector<std::shared_ptr<LookupCall>>& calls,
    const std::function<absl::Status(int, const LookupCall&)>& check) {
  const int count = static_cast<int>(calls.size());
  const auto start = calls.front()->start;
  // Checked and sized first: all rows or none.
  int64_t rows = 0;
  size_t bytes = 0;
  for (int i = 0; i < count; ++i) {
    LookupCall* call = calls[i].get();
    absl::Status s =
        call->request.as_values()
            ? absl::InvalidArgumentError(
                  "as_values is for Lookup; LookupMany returns rows as bytes")
            : PrepareLookup(*layers_, limits_, call);
    if (s.ok() && check) s = check(i, *call);
    if (s.ok()) {
      rows += call->shape.num_ids();
      const size_t out_bytes = call->shape.num_ids() * call->out_row_bytes;
      bytes += wire::LookupManyEntrySize(call->out_shape, out_bytes);
      if (rows > limits_.max_lookup_rows) {
        s = absl::ResourceExhaustedError(absl::StrCat(
            "the lookups ask for ", rows, " rows so far; the limit is ",
            limits_.max_lookup_rows, " (--max_lookup_rows)"));
      } else if (bytes + 64 > static_cast<size_t>(limits_.max_message_bytes)) {
        s = absl::ResourceExhaustedError(absl::StrCat(
            "the response would pass ", bytes, " bytes; the limit is ",
            limits_.max_message_bytes, " (--max_message_bytes)"));
      }
    }
    if (!s.ok()) {
      Finish(reactor, method, WithContext(s, absl::StrCat("lookups[", i, "]")));
      return;
    }
  }
  std::shared_ptr<PendingResponses::Charge> charge;
  if (pending_ != nullptr) {
    auto reserved = pending_->Reserve(context, static_cast<int64_t>(bytes));
    if (!reserved.ok()) {
      Finish(reactor, method, reserved.status());
      return;
    }
    charge = *std::move(reserved);
  }
  ResponseBuffer buffer = AllocateResponse(nullptr, bytes);
  if (buffer.data == nullptr) {
    Finish(reactor, method,
           absl::ResourceExhaustedError(absl::StrCat(
               "cannot allocate ", bytes, " bytes for the lookup response")));
    return;
  }
  // Every gather reports here; the last one finishes the call.
  struct Join {
    std::atomic<int> remaining;
    std::mutex mu;
    absl::Status status;  // the first failure, guarded by mu
  };
  auto join = std::make_shared<Join>();
  join->remaining.store(count, std::memory_order_relaxed);
  auto finish = [this, reactor, response, join, buffer, bytes, charge, rows,
                 start, method] {
    if (!join->status.ok()) {
      buffer.destroy(buffer.user_data);
      Finish(reactor, method, join->status);
      return;
    }
    grpc::Slice slice = PendingResponses::ChargedSlice(
        buffer.data, bytes, buffer.destroy, buffer.user_data, charge);
    *response = grpc::ByteBuffer(&slice, 1);
    metrics_->RecordLookup(
        std::chrono::duration<double>(Clock::now() - start).count(), rows,
        static_cast<int64_t>(bytes));
    Finish(reactor, method, absl::OkStatus());
  };
  size_t at = 0;
  for (int i = 0; i < count; ++i) {
    const std::shared_ptr<LookupCall>& call = calls[i];
    const size_t out_bytes = call->shape.num_ids() * call->out_row_bytes;
    at += wire::EncodeLookupManyEntryHeader(call->out_shape,
                                            static_cast<int>(call->out_dtype),
                                            out_bytes, buffer.data + at);
    GatherInto(
        call, BackendFor(*call, /*allow_gpu=*/false), call->out_dtype,
        // `call` rides along: a big gather runs on the pool after this
        // returns and reads the call's ids until it is done.
        buffer.data + at, [join, finish, i, call](absl::Status s, bool) {
          if (!s.ok()) {
            std::lock_guard<std::mutex> lock(join->mu);
            if (join->status.ok()) {
              join->status = WithContext(s, absl::StrCat("lookups[", i, "]"));
            }
          }
          if (join->remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) {
            finish();
          }
        });
    at += out_bytes;
  }
}

EngramService::Backend EngramService::BackendFor(const LookupCall& call,
                                                 bool allow_gpu) const {
  if (cluster_ != nullptr) return Backend::kCluster;
  // The GPU tier's gather copies and converts rows of ids [B, L, H];
  // dequantizing, head slices and entries stay here.
  if (allow_gpu && gpu_ != nullptr && call.layer->gpu_mirror() != nullptr &&
      !call.dequantizes && call.heads == nullptr &&
      call.shape.num_ids() >= limits_.gpu_min_rows) {
    return Backend::kGpu;
  }
  return Backend::kLocal;
}

void EngramService::GatherInto(const std::shared_ptr<LookupCall>& call,
                               Backend backend, DType out_dtype, uint8_t* rows,
                               RowsDone done) {
  const int64_t n = call->shape.num_ids();
  switch (backend) {
    case Backend::kCluster: {
      // Local rows and mapped remote rows are copied by the caller of
      // Gather: big lookups hand that to the pool instead of the reactor.
      auto run = [this, call, n, out_dtype, rows, done = std::move(done)] {
        cluster_->Gather(
            call->layer, {call->ids, call->heads}, n, out_dtype, rows,
            [done](absl::Status s) { done(std::move(s), false); },
            call->token_model);
      };
      if (n >= kParallelGatherMinRows) {
        pool_->Submit(std::move(run));
      } else {
        run();
      }
      return;
    }
    case Backend::kGpu: {  // blocks on the device: callers are on the pool
      absl::Status s = gpu_->Gather(*call->layer->gpu_mirror(), call->ids, n,
                                    out_dtype, rows);
      if (!s.ok()) {
        metrics_->RecordGpuFallback();
        LogGpuFallback(s);
        GatherRows(*call->layer, {call->ids, call->heads}, 0, n, out_dtype,
                   rows);
      }
      done(absl::OkStatus(), s.ok());
      return;
    }
    case Backend::kLocal:
      if (call->layer->may_fault() && n < kParallelGatherMinRows) {
        // Rows of a table bigger than memory may wait on the disk: never
        // on the reactor (big gathers go to the pool anyway).
        pool_->Submit([call, n, out_dtype, rows, done = std::move(done)] {
          GatherRows(*call->layer, {call->ids, call->heads}, 0, n, out_dtype,
                     rows);
          done(absl::OkStatus(), false);
        });
        return;
      }
      GatherAsync(pool_, *call->layer, {call->ids, call->heads}, n, out_dtype,
                  rows,
                  [done = std::move(done)] { done(absl::OkStatus(), false); });
      return;
  }
}

void EngramService::ServeRows(const grpc::CallbackServerContext& context,
                              grpc::ServerUnaryReactor* reactor,
                              grpc::ByteBuffer* response,
                              std::shared_ptr<LookupCall> call) {
  const int64_t num_ids = call->shape.num_ids();
  const std::vector<int64_t>& shape = call->out_shape;
  const size_t out_bytes = static_cast<size_t>(num_ids) * call->out_row_bytes;
  const size_t header_bytes = wire::LookupResponseHeaderSize(shape, out_bytes);
  std::shared_ptr<PendingResponses::Charge> charge;
  if (pending_ != nullptr) {
    auto reserved = pending_->Reserve(
        context, static_cast<int64_t>(header_bytes + out_bytes));
    if (!reserved.ok()) {
      Finish(reactor, Method::kLookup, reserved.status());
      return;
    }
    charge = *std::move(reserved);
  }
  const Backend backend = BackendFor(*call, /*allow_gpu=*/true);
  // Allocates the one response buffer (pinned for the GPU), writes the
  // header, gathers the rows behind it and finishes: the one finish path.
  auto serve = [this, call, reactor, response, shape, header_bytes, out_bytes,
                num_ids, charge, backend] {
    ResponseBuffer buffer = AllocateResponse(
        backend == Backend::kGpu ? gpu_ : nullptr, header_bytes + out_bytes);
    if (buffer.data == nullptr) {
      Finish(reactor, Method::kLookup,
             absl::ResourceExhaustedError(
                 absl::StrCat("cannot allocate ", out_bytes,
                              " bytes for the lookup response")));
      return;
    }
    wire::EncodeLookupResponseHeader(shape, static_cast<int>(call->out_dtype),
                                     out_bytes, buffer.data);
    GatherInto(
        call, backend, call->out_dtype, buffer.data + header_bytes,
        [this, call, reactor, response, header_bytes, out_bytes, num_ids,
         charge, buffer](absl::Status s, bool on_gpu) {
          if (!s.ok()) {
            buffer.destroy(buffer.user_data);
            Finish(reactor, Method::kLookup, s);
            return;
          }
          grpc::Slice slice = PendingResponses::ChargedSlice(
              buffer.data, header_bytes + out_bytes, buffer.destroy,
              buffer.user_data, charge);
          *response = grpc::ByteBuffer(&slice, 1);
          metrics_->RecordLookup(
              std::chrono::duration<double>(Clock::now() - call->start).count(),
              num_ids, static_cast<int64_t>(out_bytes));
          metrics_->RecordTier(on_gpu);
          Finish(reactor, Method::kLookup, absl::OkStatus());
        });
  };
  // Pinned allocation and the device copy block: never on the reactor.
  if (backend == Backend::kGpu) {
    pool_->Submit(std::move(serve));
  } else {
    serve();
  }
}

void EngramService::ServeValues(const grpc::CallbackServerContext& context,
                                grpc::ServerUnaryReactor* reactor,
                                grpc::ByteBuffer* response,
                                std::shared_ptr<LookupCall> call) {
  // Debugging path (grpcurl): readable float32 values in a protobuf.
  const int64_t num_ids = call->shape.num_ids();
  // Charged like rows: the values (4 bytes each) and, at the peak, their
  // serialized copy, until gRPC has sent it.
  const size_t values_bytes =
      static_cast<size_t>(num_ids * call->out_dim) * sizeof(float);
  std::shared_ptr<PendingResponses::Charge> charge;
  if (pending_ != nullptr) {
    auto reserved =
        pending_->Reserve(context, static_cast<int64_t>(2 * values_bytes + 64));
    if (!reserved.ok()) {
      Finish(reactor, Method::kLookup, reserved.status());
      return;
    }
    charge = *std::move(reserved);
  }
  auto message = std::make_shared<v1::LookupResponse>();
  for (int64_t d : call->out_shape) message->add_shape(d);
  message->set_dtype(v1::DTYPE_FLOAT32);
  message->mutable_values()->Resize(static_cast<int>(num_ids * call->out_dim),
                                    0.0f);
  auto* values =
      reinterpret_cast<uint8_t*>(message->mutable_values()->mutable_data());
  // Big gathers finish on the pool, so the serialization runs there too.
  GatherInto(
      call, BackendFor(*call, /*allow_gpu=*/false), DType::kFloat32, values,
      [this, call, message, reactor, response, num_ids, charge](absl::Status s,
                                                                bool) mutable {
        if (s.ok()) {
          // Serialized into a charged slice: the charge ends when gRPC
          // releases it, not when this call returns.
          const size_t size = message->ByteSizeLong();
          auto* bytes = static_cast<uint8_t*>(std::malloc(size));
          if (bytes == nullptr) {
            s = absl::ResourceExhaustedError(absl::StrCat(
                "cannot allocate ", size, " bytes for the lookup response"));
          } else {
            message->SerializeWithCachedSizesToArray(bytes);
            message.reset();
            grpc::Slice slice = PendingResponses::ChargedSlice(
                bytes, size, &std::free, bytes, std::move(charge));
            *response = grpc::ByteBuffer(&slice, 1);
          }
        }
        if (s.ok()) {
          metrics_->RecordLookup(
              std::chrono::duration<double>(Clock::now() - call->start).count(),
              num_ids, num_ids * call->out_row_bytes);
        }
        Finish(reactor, Method::kLookup, s);
      });
}

grpc::ServerUnaryReactor* EngramService::Remove(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  Caller caller;
  if (auto* refused = Refuse(context, Method::kRemove, &caller)) {
    return refused;
  }
  return ServeRaw<v1::RemoveRequest, v1::RemoveResponse>(
      context, request, response,
      [this, rights = caller.rights](const v1::RemoveRequest& req,
                                     v1::RemoveResponse* resp, RawDone done) {
        if (req.force() && (rights & kRightAdmin) == 0) {
          done(absl::PermissionDeniedError(
              "Remove with force (aborting a populate in progress) needs the "
              "admin role"));
          return;
        }
        RemoveParsed(req, resp, std::move(done));
      },
      Observer(Method::kRemove));
}

void EngramService::RemoveParsed(const v1::RemoveRequest& request,
                                 v1::RemoveResponse* response, RawDone done) {
  const int64_t id = request.layer_id();
  if (cluster_ != nullptr) {
    cluster_->Remove(
        id, request.force(),
        [response, id, done = std::move(done)](absl::StatusOr<int> removed) {
          if (removed.ok()) {
            response->set_tables_removed(*removed);
            LogInfo(absl::StrCat("layer ", id, " removed from the cluster"));
          }
          done(removed.status());
        });
    return;
  }
  absl::StatusOr<int> removed = layers_->Remove(id, request.force());
  if (removed.ok()) {
    response->set_tables_removed(*removed);
    if (*removed > 0) {
      LogInfo(absl::StrCat("layer ", id, " removed (", *removed,
                           " tables); memory is freed once in-flight "
                           "lookups finish"));
    } else {
      LogInfo(absl::StrCat("populate of layer ", id,
                           " aborted by a forced Remove"));
    }
  }
  done(removed.status());
}

grpc::ServerUnaryReactor* EngramService::DescribeLayer(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  if (auto* refused = Refuse(context, Method::kDescribeLayer)) {
    return refused;
  }
  return ServeRaw<v1::DescribeLayerRequest, v1::LayerInfo>(
      context, request, response,
      [this](const v1::DescribeLayerRequest& req, v1::LayerInfo* info,
             RawDone done) {
        std::shared_ptr<const Layer> layer = layers_->Find(req.layer_id());
        if (layer == nullptr) {
          done(absl::NotFoundError(
              absl::StrCat("layer ", req.layer_id(), " not found")));
          return;
        }
        FillLayerInfo(layer->id(), layer->layout(), info, layer->version());
        done(absl::OkStatus());
      },
      Observer(Method::kDescribeLayer));
}

grpc::ServerUnaryReactor* EngramService::ListLayers(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  if (auto* refused = Refuse(context, Method::kListLayers)) {
    return refused;
  }
  return ServeRaw<v1::ListLayersRequest, v1::ListLayersResponse>(
      context, request, response,
      [this](const v1::ListLayersRequest&, v1::ListLayersResponse* list,
             RawDone done) {
        for (const auto& layer : layers_->List()) {
          FillLayerInfo(layer->id(), layer->layout(), list->add_layers(),
                        layer->version());
        }
        done(absl::OkStatus());
      },
      Observer(Method::kListLayers));
}

grpc::ServerUnaryReactor* EngramService::Load(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  if (auto* refused = Refuse(context, Method::kLoad)) return refused;
  return ServeRaw<v1::LoadRequest, v1::LoadResponse>(
      context, request, response,
      [this, deadline = context->deadline()](
          const v1::LoadRequest& req, v1::LoadResponse* resp, RawDone done) {
        if (loader_ == nullptr) {
          done(absl::FailedPreconditionError("this server cannot load files"));
          return;
        }
        loader_->LoadRequested(
            req.manifest_path(), req.manifest_json(), deadline,
            [resp, done = std::move(done)](
                absl::StatusOr<TableLoader::Layers> layers) {
              if (layers.ok()) {
                for (const auto& l : *layers)
                  FillLayerInfo(l->id(), l->layout(), resp->add_layers(),
                                l->version());
              }
              done(layers.status());
            });
      },
      Observer(Method::kLoad));
}

}  // namespace engram
