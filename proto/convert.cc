#include "proto/convert.h"

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_context.h"

namespace engram {

DType DTypeFromProto(v1::DType dtype) {
  return dtype == v1::DTYPE_UNSPECIFIED ? DType::kFloat32
                                        : static_cast<DType>(dtype);
}

v1::DType DTypeToProto(DType dtype) { return static_cast<v1::DType>(dtype); }

LayerLayout LayoutOf(const v1::LayerConfig& config) {
  LayerLayout layout;
  layout.table_vocab_sizes.assign(config.table_vocab_sizes().begin(),
                                  config.table_vocab_sizes().end());
  layout.embedding_dim = config.embedding_dim();
  layout.dtype = DTypeFromProto(config.dtype());
  if (config.has_quant()) {
    // A server's own reply spells a known format; anything else reads as
    // unquantized here and is refused by LayoutFromConfig.
    absl::StatusOr<Quant> quant =
        QuantFromNames(config.quant().format(), config.quant().scale(),
                       config.quant().block());
    if (quant.ok()) layout.quant = *quant;
  }
  return layout;
}

absl::StatusOr<LayerLayout> LayoutFromConfig(const v1::LayerConfig& config) {
  LayerLayout layout = LayoutOf(config);
  if (config.has_quant()) {
    absl::StatusOr<Quant> quant =
        QuantFromNames(config.quant().format(), config.quant().scale(),
                       config.quant().block());
    if (!quant.ok()) return WithContext(quant.status(), "config.quant");
  }
  if (absl::Status s = ValidateLayout(layout); !s.ok()) return s;
  return layout;
}

void LayoutToConfig(const LayerLayout& layout, v1::LayerConfig* config) {
  config->clear_table_vocab_sizes();
  for (int64_t n : layout.table_vocab_sizes) config->add_table_vocab_sizes(n);
  config->set_embedding_dim(layout.embedding_dim);
  config->set_dtype(DTypeToProto(layout.dtype));
  config->clear_quant();
  if (layout.quant.enabled()) {
    v1::QuantConfig* quant = config->mutable_quant();
    quant->set_format(QuantFormatName(layout.quant.format));
    quant->set_scale(QuantScaleName(layout.quant.format));
    quant->set_block(layout.quant.block);
  }
}

void FillLayerInfo(int64_t layer_id, const LayerLayout& layout,
                   v1::LayerInfo* info, uint64_t version) {
  info->set_layer_id(layer_id);
  LayoutToConfig(layout, info->mutable_config());
  for (int h = 0; h < layout.num_heads(); ++h) {
    info->add_store_keys(StoreKey(layer_id, h));
  }
  info->set_num_heads(layout.num_heads());
  info->set_bytes(static_cast<int64_t>(layout.total_bytes()));
  info->set_version(version);
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  constexpr size_t kMaxMessage = 1024;
  std::string message(status.message().substr(0, kMaxMessage));
  if (status.message().size() > kMaxMessage) message += " [...]";
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::move(message));
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  std::string message = status.error_message();
  // gRPC's words when one side speaks TLS and the other does not say
  // nothing about TLS: add what to check.
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE &&
      (absl::StrContains(message, "Socket closed") ||
       absl::StrContains(message, "Handshake failed") ||
       absl::StrContains(message, "handshake"))) {
    absl::StrAppend(&message,
                    " (the connection closed while it was set up: if the "
                    "server uses TLS, connect with TLS (engramctl --tls or "
                    "--tls_ca_file, Python tls_ca_file=); if not, without it)");
  }
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      message);
}

absl::Status FromGrpcStatus(const grpc::Status& status,
                            absl::string_view context) {
  if (status.ok()) return absl::OkStatus();
  return WithContext(FromGrpcStatus(status), context);
}

}  // namespace engram
