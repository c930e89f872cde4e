#include "client/client.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/client_unary_call.h>

#include <algorithm>
#include <atomic>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "client/cluster_router.h"
#include "client/device_reads.h"
#include "client/direct_reads.h"
#include "client/from_proto.h"
#include "client/token_lookups.h"
#include "common/status_context.h"
#include "engram/v1/engram.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "proto/channel_security.h"
#include "proto/channel_tuning.h"
#include "proto/convert.h"
#include "proto/wire_format.h"

namespace engram {
namespace {

constexpr char kLookupMethod[] = "/engram.v1.EngramStore/Lookup";
constexpr char kLookupManyMethod[] = "/engram.v1.EngramStore/LookupMany";

std::vector<LayerDescription> FromProto(
    const google::protobuf::RepeatedPtrField<v1::LayerInfo>& infos) {
  std::vector<LayerDescription> layers;
  for (const v1::LayerInfo& info : infos) {
    layers.push_back(LayerDescriptionFromProto(info));
  }
  return layers;
}

ChannelSecurity Security(const ClientOptions& options) {
  ChannelSecurity security;
  security.tls = options.tls;
  security.tls_ca_file = options.tls_ca_file;
  security.tls_cert_file = options.tls_cert_file;
  security.tls_key_file = options.tls_key_file;
  security.tls_server_name = options.tls_server_name;
  if (!options.token.empty()) {
    security.token = std::make_shared<BearerToken>(options.token);
  }
  return security;
}

// State of one asynchronous lookup, freed by its completion callback.
struct LookupCall {
  grpc::ClientContext context;
  grpc::ByteBuffer request;
  grpc::ByteBuffer response;
  std::span<uint8_t> output;
  std::function<void(absl::Status)> done;
};

}  // namespace

struct Client::Impl {
  ClientOptions options;
  // Cluster mode: routes lookups; public calls fail over across `shards`.
  std::unique_ptr<ClusterRouter> router;
  std::vector<std::unique_ptr<v1::EngramStore::Stub>> shard_stubs;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::EngramStore::Stub> stub;
  // One generic stub per connection; lookups rotate over them.
  std::vector<std::unique_ptr<grpc::GenericStub>> lookup_stubs;
  std::atomic<uint64_t> next_lookup{0};

  // Channel i carries lookup_stubs[i]; both lists rotate together.
  std::vector<std::shared_ptr<grpc::Channel>> lookup_channels;

  // Token lookups hashed here and routed (with `router` only).
  std::unique_ptr<RoutedTokenLookups> token_lookups;

  // Device lookups, made at the first call (null without client_gpu).
  std::once_flag device_once;
  std::unique_ptr<DeviceReads> device;

  grpc::GenericStub* generic() { return lookup_stubs[0].get(); }
  size_t NextLookupIndex() {
    return next_lookup.fetch_add(1, std::memory_order_relaxed) %
           lookup_stubs.size();
  }

  void SetDeadline(grpc::ClientContext* context, absl::Duration timeout) const {
    context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  }
  void SetDeadline(grpc::ClientContext* context) const {
    SetDeadline(context, options.timeout);
  }

  // One blocking raw unary call of `method` on the next lookup channel, on
  // this thread (as generated sync stubs do: no hop to a callback thread,
  // which matters for small decode lookups).
  absl::Status CallRaw(const char* method, const grpc::ByteBuffer& request,
                       grpc::ByteBuffer* response) {
    grpc::ClientContext context;
    SetDeadline(&context);
    const grpc::internal::RpcMethod rpc(method,
                                        grpc::internal::RpcMethod::NORMAL_RPC);
    return FromGrpcStatus(
        grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
            lookup_channels[NextLookupIndex()].get(), rpc, &context, request,
            response));
  }
};

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

absl::StatusOr<std::unique_ptr<Client>> Client::ConnectCluster(
    const std::vector<std::string>& shards, int replication,
    ClientOptions options) {
  if (shards.empty()) return absl::InvalidArgumentError("no shard addresses");
  if (options.direct_reads && DirectReadsFactoryOrNull() == nullptr) {
    return absl::FailedPreconditionError(
        "ClientOptions::direct_reads needs the engram::client_direct library "
        "linked into the application (it brings UCX)");
  }
  absl::StatusOr<Placement> placement =
      Placement::Create(static_cast<int>(shards.size()), replication);
  if (!placement.ok()) return placement.status();
  ClientOptions plain = options;
  plain.direct_reads = false;  // the router below reads directly
  absl::StatusOr<std::unique_ptr<Client>> client = Connect(shards[0], plain);
  if (!client.ok()) return client.status();
  Impl* impl = (*client)->impl_.get();
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (const std::string& address : shards) {
    grpc::ChannelArguments args = TunedChannelArguments();
    args.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
    SetReconnectBackoff(kServerReconnect, &args);
    absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
        CreateSecureChannel(address, Security(options), args);
    if (!channel.ok()) return channel.status();
    channels.push_back(*std::move(channel));
    impl->shard_stubs.push_back(v1::EngramStore::NewStub(channels.back()));
  }
  impl->router = std::make_unique<ClusterRouter>(
      channels, *placement, options.timeout,
      [impl](int64_t layer_id) -> absl::StatusOr<LayerLayout> {
        // Any shard knows every layer: ask them in turn.
        absl::Status last;
        for (auto& stub : impl->shard_stubs) {
          grpc::ClientContext context;
          impl->SetDeadline(&context);
          v1::DescribeLayerRequest request;
          request.set_layer_id(layer_id);
          v1::LayerInfo info;
          last = FromGrpcStatus(stub->DescribeLayer(&context, request, &info));
          if (last.ok()) return LayerDescriptionFromProto(info).layout;
          if (last.code() != absl::StatusCode::kUnavailable &&
              last.code() != absl::StatusCode::kDeadlineExceeded) {
            return last;
          }
        }
        return last;
      },
      options.direct_reads);
  impl->token_lookups =
      std::make_unique<RoutedTokenLookups>(impl->router.get(), options.timeout);
  return client;
}
Client::~Client() = default;

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(
    const std::string& address, ClientOptions options) {
  if (address.empty()) {
    return absl::InvalidArgumentError("empty server address");
  }
  // Direct reads go through the router, which treats a single node as a
  // one-shard cluster.
  if (options.direct_reads) return ConnectCluster({address}, 1, options);
  grpc::ChannelArguments args = TunedChannelArguments();
  args.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  args.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  const ChannelSecurity security = Security(options);
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      CreateSecureChannel(address, security, args);
  if (!channel.ok()) return channel.status();
  impl->channel = *std::move(channel);
  impl->stub = v1::EngramStore::NewStub(impl->channel);
  impl->lookup_channels.push_back(impl->channel);
  for (int i = 1; i < options.num_channels; ++i) {
    // A distinct argument keeps gRPC from sharing one connection.
    grpc::ChannelArguments extra = args;
    extra.SetInt("engram.connection_index", i);
    impl->lookup_channels.push_back(
        *CreateSecureChannel(address, security, extra));
  }
  for (const auto& channel : impl->lookup_channels) {
    impl->lookup_stubs.push_back(std::make_unique<grpc::GenericStub>(channel));
  }
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

absl::StatusOr<LayerDescription> Client::Populate(
    int64_t layer_id, const LayerLayout& layout,
    const std::vector<std::span<const uint8_t>>& tables,
    const PopulateProgress& progress) {
  return PopulateOrReplace(layer_id, layout, tables, progress, false);
}

absl::StatusOr<LayerDescription> Client::Replace(
    int64_t layer_id, const LayerLayout& layout,
    const std::vector<std::span<const uint8_t>>& tables,
    const PopulateProgress& progress) {
  return PopulateOrReplace(layer_id, layout, tables, progress, true);
}

absl::StatusOr<LayerDescription> Client::PopulateOrReplace(
    int64_t layer_id, const LayerLayout& layout,
    const std::vector<std::span<const uint8_t>>& tables,
    const PopulateProgress& progress, bool replace) {
  if (absl::Status s = ValidateLayout(layout); !s.ok()) return s;
  if (tables.size() != static_cast<size_t>(layout.num_heads())) {
    return absl::InvalidArgumentError(
        absl::StrCat("layout has ", layout.num_heads(), " heads but ",
                     tables.size(), " tables were given"));
  }
  for (int h = 0; h < layout.num_heads(); ++h) {
    if (tables[h].size() != layout.table_bytes(h)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "table ", h, " has ", tables[h].size(), " bytes; [N_h = ",
          layout.table_vocab_sizes[h], ", D = ", layout.embedding_dim, "] ",
          DTypeName(layout.dtype), " needs ", layout.table_bytes(h)));
    }
  }
  const size_t row_bytes = layout.row_bytes();
  return PopulateFrom(
      layer_id, layout,
      [&tables, row_bytes](int head, int64_t row, int64_t rows, uint8_t* dst) {
        std::memcpy(dst, tables[head].data() + row * row_bytes,
                    rows * row_bytes);
        return absl::OkStatus();
      },
      progress, replace);
}

absl::StatusOr<LayerDescription> Client::PopulateFrom(
    int64_t layer_id, const LayerLayout& layout, const RowSource& source,
    const PopulateProgress& progress, bool replace) {
  if (absl::Status s = ValidateLayout(layout); !s.ok()) return s;
  if (impl_->router != nullptr) {  // straight to the owners
    absl::Status s = impl_->router->Populate(
        layer_id, layout, source, impl_->options.populate_chunk_bytes,
        impl_->options.populate_timeout, progress, replace);
    if (!s.ok()) return s;
    LayerDescription d;
    d.layer_id = layer_id;
    d.layout = layout;
    for (int h = 0; h < layout.num_heads(); ++h)
      d.store_keys.push_back(StoreKey(layer_id, h));
    d.bytes = static_cast<int64_t>(layout.total_bytes());
    return d;
  }
  grpc::ClientContext context;
  impl_->SetDeadline(&context, impl_->options.populate_timeout);
  v1::PopulateResponse response;
  std::unique_ptr<grpc::ClientWriter<v1::PopulateRequest>> writer =
      impl_->stub->Populate(&context, &response);

  v1::PopulateRequest message;
  v1::PopulateHeader* header = message.mutable_header();
  header->set_layer_id(layer_id);
  header->set_replace(replace);
  LayoutToConfig(layout, header->mutable_config());
  bool open = writer->Write(message);

  const size_t row_bytes = layout.row_bytes();
  const size_t rows_per_chunk =
      std::max<size_t>(1, impl_->options.populate_chunk_bytes / row_bytes);
  const uint64_t total = layout.total_bytes();
  uint64_t sent = 0;
  absl::Status read_error;
  for (int h = 0; open && h < layout.num_heads(); ++h) {
    const size_t rows = static_cast<size_t>(layout.table_vocab_sizes[h]);
    for (size_t r = 0; open && r < rows; r += rows_per_chunk) {
      const size_t n = std::min(rows_per_chunk, rows - r);
      v1::TableChunk* chunk = message.mutable_chunk();
      chunk->set_head(h);
      chunk->set_row_offset(static_cast<int64_t>(r));
      std::string* data = chunk->mutable_data();
      data->resize(n * row_bytes);  // reused: grown once, never zeroed again
      read_error = source(h, static_cast<int64_t>(r), static_cast<int64_t>(n),
                          reinterpret_cast<uint8_t*>(data->data()));
      if (!read_error.ok()) {
        context.TryCancel();
        open = false;
        break;
      }
      open = writer->Write(message);
      sent += n * row_bytes;
      if (progress) progress(sent, total);
    }
  }
  if (open) writer->WritesDone();
  // A closed stream means the server already ended the call: its status
  // says why.
  absl::Status s = FromGrpcStatus(writer->Finish());
  if (!read_error.ok()) return read_error;
  if (!s.ok()) return s;
  return LayerDescriptionFromProto(response.layer());
}

namespace {

grpc::ByteBuffer EncodeLookup(int64_t layer_id, std::span<const int64_t> shape,
                              std::span<const int64_t> ids,
                              const LookupOptions& options) {
  return wire::EncodeLookupRequest(
      layer_id, shape, ids,
      options.output_dtype ? static_cast<int>(*options.output_dtype) : 0,
      static_cast<int>(options.id_form), options.head_begin, options.head_end);
}

}  // namespace

void Client::LookupAsync(int64_t layer_id, std::span<const int64_t> ids,
                         std::span<const int64_t> shape,
                         std::span<uint8_t> output,
                         std::optional<DType> output_dtype,
                         std::function<void(absl::Status)> done) {
  LookupOptions options;
  options.output_dtype = output_dtype;
  LookupAsync(layer_id, ids, shape, output, options, std::move(done));
}

void Client::LookupAsync(int64_t layer_id, std::span<const int64_t> ids,
                         std::span<const int64_t> shape,
                         std::span<uint8_t> output,
                         const LookupOptions& options,
                         std::function<void(absl::Status)> done) {
  if (impl_->router != nullptr) {
    impl_->router->Lookup(layer_id, ids, shape, output, options,
                          std::move(done));
    return;
  }
  auto* call = new LookupCall;
  impl_->SetDeadline(&call->context);
  call->request = EncodeLookup(layer_id, shape, ids, options);
  call->output = output;
  call->done = std::move(done);
  impl_->lookup_stubs[impl_->NextLookupIndex()]->UnaryCall(
      &call->context, kLookupMethod, grpc::StubOptions(), &call->request,
      &call->response, [call](grpc::Status status) {
        absl::Status result = FromGrpcStatus(status);
        if (result.ok()) {
          wire::DecodedLookup decoded;
          result = wire::DecodeLookupResponse(call->response, call->output,
                                              &decoded);
        }
        std::function<void(absl::Status)> done = std::move(call->done);
        delete call;
        done(std::move(result));
      });
}

std::future<absl::Status> Client::LookupAsync(
    int64_t layer_id, std::span<const int64_t> ids,
    std::span<const int64_t> shape, std::span<uint8_t> output,
    std::optional<DType> output_dtype) {
  auto promise = std::make_shared<std::promise<absl::Status>>();
  std::future<absl::Status> future = promise->get_future();
  LookupAsync(layer_id, ids, shape, output, output_dtype,
              [promise](absl::Status s) { promise->set_value(std::move(s)); });
  return future;
}

absl::Status Client::Lookup(int64_t layer_id, std::span<const int64_t> ids,
                            std::span<const int64_t> shape,
                            std::span<uint8_t> output,
                            std::optional<DType> output_dtype) {
  LookupOptions options;
  options.output_dtype = output_dtype;
  return Lookup(layer_id, ids, shape, output, options);
}

absl::Status Client::Lookup(int64_t layer_id, std::span<const int64_t> ids,
                            std::span<const int64_t> shape,
                            std::span<uint8_t> output,
                            const LookupOptions& options) {
  if (impl_->router != nullptr) {
    std::promise<absl::Status> result;
    impl_->router->Lookup(
        layer_id, ids, shape, output, options,
        [&result](absl::Status s) { result.set_value(std::move(s)); });
    return result.get_future().get();
  }
  grpc::ByteBuffer response;
  if (absl::Status s = impl_->CallRaw(
          kLookupMethod, EncodeLookup(layer_id, shape, ids, options),
          &response);
      !s.ok()) {
    return s;
  }
  wire::DecodedLookup decoded;
  return wire::DecodeLookupResponse(response, output, &decoded);
}

absl::Status Client::LookupMany(std::span<const LookupSpec> lookups) {
  if (lookups.empty()) {
    return absl::InvalidArgumentError("LookupMany needs at least one lookup");
  }
  if (impl_->router != nullptr) {
    // Each lookup goes to the owners of its rows; all run at once.
    std::vector<std::future<absl::Status>> results;
    for (const LookupSpec& l : lookups) {
      auto promise = std::make_shared<std::promise<absl::Status>>();
      results.push_back(promise->get_future());
      impl_->router->Lookup(
          l.layer_id, l.ids, l.shape, l.output, l.options,
          [promise](absl::Status s) { promise->set_value(std::move(s)); });
    }
    absl::Status first;
    for (size_t i = 0; i < results.size(); ++i) {
      absl::Status s = results[i].get();
      if (!s.ok() && first.ok()) {
        first = WithContext(s, absl::StrCat("lookups[", i, "]"));
      }
    }
    return first;
  }
  std::vector<grpc::ByteBuffer> encoded;
  std::vector<std::span<uint8_t>> outs;
  for (const LookupSpec& l : lookups) {
    encoded.push_back(EncodeLookup(l.layer_id, l.shape, l.ids, l.options));
    outs.push_back(l.output);
  }
  grpc::ByteBuffer response;
  if (absl::Status s = impl_->CallRaw(
          kLookupManyMethod, wire::EncodeLookupManyRequest(encoded), &response);
      !s.ok()) {
    return s;
  }
  std::vector<wire::DecodedLookup> decoded;
  return wire::DecodeLookupManyResponse(response, outs, &decoded);
}

absl::Status Client::LookupTokens(std::span<const int64_t> layer_ids,
                                  std::span<const int64_t> tokens,
                                  std::span<const int64_t> shape,
                                  std::span<const int64_t> history,
                                  std::span<const std::span<uint8_t>> outputs,
                                  std::optional<DType> output_dtype) {
  if (shape.size() != 2 || layer_ids.size() != outputs.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LookupTokens takes shape {B, T} and one output per layer; got rank ",
        shape.size(), ", ", layer_ids.size(), " layers and ", outputs.size(),
        " outputs"));
  }
  if (shape[0] < 1 || history.size() % shape[0] != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("history holds ", history.size(),
                     " ids: not whole rows of B = ", shape[0], " sequences"));
  }
  if (impl_->token_lookups != nullptr) {
    if (static_cast<int64_t>(tokens.size()) != shape[0] * shape[1]) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokens has ", tokens.size(), " ids; shape [", shape[0],
                       ", ", shape[1], "] needs ", shape[0] * shape[1]));
    }
    return impl_->token_lookups->Lookup(layer_ids, tokens, shape[0], history,
                                        outputs, output_dtype);
  }
  v1::LookupTokensRequest request;
  for (int64_t layer : layer_ids) request.add_layer_ids(layer);
  for (int64_t d : shape) request.add_shape(d);
  request.set_tokens(tokens.data(), tokens.size_bytes());
  request.set_history(history.data(), history.size_bytes());
  request.set_history_length(static_cast<int32_t>(history.size() / shape[0]));
  if (output_dtype) {
    request.set_output_dtype(static_cast<v1::DType>(*output_dtype));
  }
  grpc::ByteBuffer raw;
  bool own = false;
  if (!grpc::SerializationTraits<v1::LookupTokensRequest>::Serialize(request,
                                                                     &raw, &own)
           .ok()) {
    return absl::InternalError("cannot encode the LookupTokens request");
  }
  grpc::ByteBuffer response;
  if (absl::Status s =
          impl_->CallRaw("/engram.v1.EngramStore/LookupTokens", raw, &response);
      !s.ok()) {
    return s;
  }
  std::vector<wire::DecodedLookup> decoded;
  return wire::DecodeLookupManyResponse(response, outputs, &decoded);
}

namespace {
DeviceReadsFactory device_reads_factory = nullptr;  // set at static init

absl::Status NoDeviceReads() {
  return absl::FailedPreconditionError(
      "device lookups need the engram::client_gpu library linked into the "
      "application (it brings the CUDA runtime)");
}
}  // namespace

void RegisterDeviceReads(DeviceReadsFactory factory) {
  device_reads_factory = factory;
}
DeviceReadsFactory DeviceReadsFactoryOrNull() { return device_reads_factory; }

const char* DevicePathName(DevicePath path) {
  switch (path) {
    case DevicePath::kGpuShared:
      return "gpu-shared";
    case DevicePath::kHostMapped:
      return "host-mapped";
    case DevicePath::kRpc:
      return "rpc";
  }
  return "unknown";
}

DeviceReads* Client::Device() {
  std::call_once(impl_->device_once, [this] {
    if (device_reads_factory == nullptr) return;
    DeviceReadsEnv env;
    env.channel = impl_->channel;
    env.timeout = impl_->options.timeout;
    env.rpc_lookup = [this](int64_t layer_id, std::span<const int64_t> ids,
                            std::span<const int64_t> shape,
                            std::span<uint8_t> output,
                            const LookupOptions& options) {
      return Lookup(layer_id, ids, shape, output, options);
    };
    env.rpc_lookup_tokens =
        [this](int64_t layer_id, std::span<const int64_t> tokens,
               std::span<const int64_t> shape, std::span<const int64_t> history,
               std::span<uint8_t> output, std::optional<DType> output_dtype) {
          const int64_t layers[] = {layer_id};
          const std::span<uint8_t> outputs[] = {output};
          return LookupTokens(layers, tokens, shape, history, outputs,
                              output_dtype);
        };
    impl_->device = device_reads_factory(std::move(env));
  });
  return impl_->device.get();
}

absl::Status Client::LookupToDevice(const DeviceLookupRequest& request,
                                    DevicePath* path) {
  DeviceReads* device = Device();
  if (device == nullptr) return NoDeviceReads();
  return device->Lookup(request, path);
}

absl::Status Client::LookupToDevice(
    std::span<const DeviceLookupRequest> requests,
    std::span<DevicePath> paths) {
  DeviceReads* device = Device();
  if (device == nullptr) return NoDeviceReads();
  if (!paths.empty() && paths.size() != requests.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("paths has ", paths.size(), " entries for ",
                     requests.size(), " lookups"));
  }
  return device->LookupMany(requests, paths);
}

absl::Status Client::DeviceLookupResult(const DeviceLookupRequest& request) {
  DeviceReads* device = Device();
  if (device == nullptr) return NoDeviceReads();
  return device->Result(request);
}

absl::StatusOr<DevicePath> Client::PrepareDeviceLookups(int64_t layer_id,
                                                        int device) {
  DeviceReads* reads = Device();
  if (reads == nullptr) return NoDeviceReads();
  return reads->Prepare(layer_id, device);
}

std::string Client::DevicePathNote(int64_t layer_id, int device) {
  DeviceReads* reads = Device();
  if (reads == nullptr) return std::string(NoDeviceReads().message());
  return reads->Note(layer_id, device);
}

absl::StatusOr<int> Client::Remove(int64_t layer_id, bool force) {
  grpc::ClientContext context;
  impl_->SetDeadline(&context);
  v1::RemoveRequest request;
  request.set_layer_id(layer_id);
  request.set_force(force);
  v1::RemoveResponse response;
  if (absl::Status s =
          FromGrpcStatus(impl_->stub->Remove(&context, request, &response));
      !s.ok()) {
    return s;
  }
  return response.tables_removed();
}

absl::StatusOr<LayerDescription> Client::DescribeLayer(int64_t layer_id) {
  grpc::ClientContext context;
  impl_->SetDeadline(&context);
  v1::DescribeLayerRequest request;
  request.set_layer_id(layer_id);
  v1::LayerInfo response;
  if (absl::Status s = FromGrpcStatus(
          impl_->stub->DescribeLayer(&context, request, &response));
      !s.ok()) {
    return s;
  }
  return LayerDescriptionFromProto(response);
}

absl::StatusOr<std::vector<LayerDescription>> Client::ListLayers() {
  grpc::ClientContext context;
  impl_->SetDeadline(&context);
  v1::ListLayersResponse response;
  if (absl::Status s = FromGrpcStatus(impl_->stub->ListLayers(
          &context, v1::ListLayersRequest(), &response));
      !s.ok()) {
    return s;
  }
  return FromProto(response.layers());
}

absl::StatusOr<Client::ServerInfo> Client::GetServerInfo() {
  grpc::ClientContext context;
  impl_->SetDeadline(&context);
  v1::ServerInfoResponse response;
  if (absl::Status s = FromGrpcStatus(impl_->stub->ServerInfo(
          &context, v1::ServerInfoRequest(), &response));
      !s.ok()) {
    return s;
  }
  return ServerInfo{response.version(), response.uptime_seconds(),
                    response.shard_index(), response.shards(),
                    response.layers()};
}

absl::StatusOr<ServerStatus> Client::GetStatus() {
  grpc::ClientContext context;
  impl_->SetDeadline(&context);
  v1::StatusResponse response;
  if (absl::Status s = FromGrpcStatus(
          impl_->stub->Status(&context, v1::StatusRequest(), &response));
      !s.ok()) {
    return s;
  }
  return ServerStatusFromProto(response);
}

absl::StatusOr<std::vector<LayerDescription>> Client::Load(
    const std::string& manifest_path) {
  grpc::ClientContext context;
  impl_->SetDeadline(&context, impl_->options.populate_timeout);
  v1::LoadRequest request;
  request.set_manifest_path(manifest_path);
  v1::LoadResponse response;
  if (absl::Status s =
          FromGrpcStatus(impl_->stub->Load(&context, request, &response));
      !s.ok()) {
    return s;
  }
  return FromProto(response.layers());
}

absl::Status Client::CheckHealth(const std::string& service) {
  grpc::health::v1::Health::Stub stub(impl_->channel);
  grpc::ClientContext context;
  impl_->SetDeadline(&context);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  if (absl::Status s = FromGrpcStatus(stub.Check(&context, request, &response));
      !s.ok()) {
    return s;
  }
  if (response.status() == grpc::health::v1::HealthCheckResponse::SERVING) {
    return absl::OkStatus();
  }
  return absl::UnavailableError(
      absl::StrCat("server health is ",
                   grpc::health::v1::HealthCheckResponse::ServingStatus_Name(
                       response.status()),
                   ", not SERVING"));
}

}  // namespace engram
