// The client library's conversions from engram.v1 messages to the plain
// types of client.h; internal to the library.
#ifndef ENGRAM_CLIENT_FROM_PROTO_H_
#define ENGRAM_CLIENT_FROM_PROTO_H_

#include "client/client.h"
#include "engram/v1/engram.pb.h"

namespace engram {

LayerDescription LayerDescriptionFromProto(const v1::LayerInfo& info);
ServerStatus ServerStatusFromProto(const v1::StatusResponse& response);

}  // namespace engram

#endif  // ENGRAM_CLIENT_FROM_PROTO_H_
