// Unary methods registered raw so that a request that does not parse is
// answered INVALID_ARGUMENT with a message (gRPC's own callback handler
// answers UNIMPLEMENTED with none).
#ifndef ENGRAM_SERVER_RAW_UNARY_H_
#define ENGRAM_SERVER_RAW_UNARY_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "proto/convert.h"

namespace engram {

// Finishes a raw unary call: on OK the typed response is serialized into
// the raw response first. Runs once, from any thread.
using RawDone = std::function<void(const absl::Status&)>;

// Parses `raw_request` as Request and calls
//   handler(const Request&, Response*, RawDone done)
// which may finish at once or later. Request and Response live until done.
// `observe` (may be empty) sees every final status, parse failures too.
template <typename Request, typename Response, typename Handler>
grpc::ServerUnaryReactor* ServeRaw(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw_request,
    grpc::ByteBuffer* raw_response, Handler&& handler,
    std::function<void(const absl::Status&)> observe = nullptr) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  struct Call {
    Request request;
    Response response;
  };
  auto call = std::make_shared<Call>();
  RawDone done = [reactor, raw_response, call,
                  observe = std::move(observe)](const absl::Status& status) {
    absl::Status s = status;
    if (s.ok()) {
      bool own_buffer = false;
      if (!grpc::SerializationTraits<Response>::Serialize(
               call->response, raw_response, &own_buffer)
               .ok()) {
        s = absl::InternalError("cannot serialize the response");
      }
    }
    if (observe) observe(s);
    reactor->Finish(ToGrpcStatus(s));
  };
  grpc::ByteBuffer parse_copy(*raw_request);  // shares slices
  if (!grpc::SerializationTraits<Request>::Deserialize(&parse_copy,
                                                       &call->request)
           .ok()) {
    done(absl::InvalidArgumentError(absl::StrCat(
        "the request does not parse as ", Request::descriptor()->full_name())));
    return reactor;
  }
  handler(call->request, &call->response, std::move(done));
  return reactor;
}

}  // namespace engram

#endif  // ENGRAM_SERVER_RAW_UNARY_H_
