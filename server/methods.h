// Every RPC engramd serves, in one table: its gRPC path, the name metrics
// and messages use, the rights it needs and whether its calls are audited
// (docs/security.md). Authorization (server/auth.h), the audit interceptor
// and the call metrics all read it; tests check it against the services'
// descriptors, so a new RPC cannot be served unlisted.
#ifndef ENGRAM_SERVER_METHODS_H_
#define ENGRAM_SERVER_METHODS_H_

#include <cstdint>

#include "absl/strings/string_view.h"

namespace engram {

// What a call needs. A role is a set of rights: read = {read},
// write = {read, write}, admin = {read, write, admin}, peer = {read, peer}.
enum Right : uint32_t {
  kRightRead = 1,   // Lookup, DescribeLayer, ListLayers, peer Gather/Transport
  kRightWrite = 2,  // Populate, Remove, Load
  kRightAdmin = 4,  // Remove(force) of another caller's populate
  kRightPeer = 8,   // Stage, Commit, Abort, RemoveLocal, StageFiles
};

// The public methods come first (their call metrics are indexed by it).
enum class Method : int {
  kPopulate,
  kLookup,
  kRemove,
  kDescribeLayer,
  kListLayers,
  kLoad,
  kLookupMany,
  kLookupTokens,
  kServerInfo,
  kStatus,
  kStage,
  kCommit,
  kAbort,
  kGather,
  kTransport,
  kWatchLayer,
  kRemoveLocal,
  kStageFiles,
  kTokenModel,
};
inline constexpr int kNumPublicMethods = 10;
inline constexpr int kNumMethods = 19;

struct MethodInfo {
  Method method;
  const char* path;  // "/engram.v1.EngramStore/Lookup"
  const char* name;  // "Lookup"
  uint32_t need;     // Right bits
  bool audited;      // write, admin and peer calls
};

const MethodInfo& Describe(Method method);
// The entry of a gRPC path; nullptr for one engramd does not serve (the
// health and reflection services).
const MethodInfo* FindMethod(absl::string_view path);

}  // namespace engram

#endif  // ENGRAM_SERVER_METHODS_H_
