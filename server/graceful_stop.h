// Stopping a gRPC server without letting idle clients hold it open.
#ifndef ENGRAM_SERVER_GRACEFUL_STOP_H_
#define ENGRAM_SERVER_GRACEFUL_STOP_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>

namespace engram {

// Calls that gRPC core has started on the servers of this process and not
// yet finished (from channelz, which core keeps anyway: no per-call cost),
// or -1 when channelz is off. Every server in the process counts.
int64_t CallsInFlight();

// Shuts `server` down: no new calls, in-flight calls may finish until
// `deadline`, then the rest are cancelled. gRPC completes a shutdown only
// when every connection has closed, so a client that keeps an idle channel
// open used to hold the stop until the deadline; here, once no call has
// been in flight for a short quiet time, every connection is closed.
// Returns when the server has stopped (server->Wait() returns at once).
void StopGracefully(grpc::Server* server,
                    std::chrono::system_clock::time_point deadline);

}  // namespace engram

#endif  // ENGRAM_SERVER_GRACEFUL_STOP_H_
