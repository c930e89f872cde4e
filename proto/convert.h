// The one place where wire types become engram types and back: layouts and
// dtypes <-> engram.v1 messages, absl::Status <-> grpc::Status. Servers,
// the cluster code and the client all convert here.
#ifndef ENGRAM_PROTO_CONVERT_H_
#define ENGRAM_PROTO_CONVERT_H_

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/layout.h"
#include "engram/v1/engram.pb.h"

namespace engram {

// DTYPE_UNSPECIFIED (0) means float32, as the API documents.
DType DTypeFromProto(v1::DType dtype);
v1::DType DTypeToProto(DType dtype);

// The layout a LayerConfig spells, unchecked (a server's own reply).
LayerLayout LayoutOf(const v1::LayerConfig& config);
// The validated layout a LayerConfig asks for; INVALID_ARGUMENT naming the
// broken invariant (unknown dtype values included).
absl::StatusOr<LayerLayout> LayoutFromConfig(const v1::LayerConfig& config);
void LayoutToConfig(const LayerLayout& layout, v1::LayerConfig* config);
// The public description of a layer: config, store keys, head count, bytes
// and version (0: not known here, e.g. a cluster populate's reply).
void FillLayerInfo(int64_t layer_id, const LayerLayout& layout,
                   v1::LayerInfo* info, uint64_t version = 0);

// absl -> gRPC status, same code; the message is cut to 1 KiB so no request
// can make the server echo megabytes back.
grpc::Status ToGrpcStatus(const absl::Status& status);
// gRPC -> absl status, same code and message.
absl::Status FromGrpcStatus(const grpc::Status& status);
// `status`'s code with `context: ` put before its message.
absl::Status FromGrpcStatus(const grpc::Status& status,
                            absl::string_view context);

}  // namespace engram

#endif  // ENGRAM_PROTO_CONVERT_H_
