#include "server/methods.h"

namespace engram {
namespace {

#define ENGRAM_PUBLIC "/engram.v1.EngramStore/"
#define ENGRAM_PEER "/engram.internal.v1.EngramPeer/"

constexpr MethodInfo kMethods[kNumMethods] = {
    {Method::kPopulate, ENGRAM_PUBLIC "Populate", "Populate", kRightWrite,
     true},
    {Method::kLookup, ENGRAM_PUBLIC "Lookup", "Lookup", kRightRead, false},
    {Method::kRemove, ENGRAM_PUBLIC "Remove", "Remove", kRightWrite, true},
    {Method::kDescribeLayer, ENGRAM_PUBLIC "DescribeLayer", "DescribeLayer",
     kRightRead, false},
    {Method::kListLayers, ENGRAM_PUBLIC "ListLayers", "ListLayers", kRightRead,
     false},
    {Method::kLoad, ENGRAM_PUBLIC "Load", "Load", kRightWrite, true},
    {Method::kLookupMany, ENGRAM_PUBLIC "LookupMany", "LookupMany", kRightRead,
     false},
    {Method::kLookupTokens, ENGRAM_PUBLIC "LookupTokens", "LookupTokens",
     kRightRead, false},
    {Method::kServerInfo, ENGRAM_PUBLIC "ServerInfo", "ServerInfo", kRightRead,
     false},
    {Method::kStatus, ENGRAM_PUBLIC "Status", "Status", kRightRead, false},
    {Method::kStage, ENGRAM_PEER "Stage", "Stage", kRightPeer, true},
    {Method::kCommit, ENGRAM_PEER "Commit", "Commit", kRightPeer, true},
    {Method::kAbort, ENGRAM_PEER "Abort", "Abort", kRightPeer, true},
    // Read callers get attach-only descriptors from Transport and
    // WatchLayer (server/layer_watch.h ExportAccess).
    {Method::kGather, ENGRAM_PEER "Gather", "Gather", kRightRead, false},
    {Method::kTransport, ENGRAM_PEER "Transport", "Transport", kRightRead,
     false},
    {Method::kWatchLayer, ENGRAM_PEER "WatchLayer", "WatchLayer", kRightRead,
     false},
    {Method::kRemoveLocal, ENGRAM_PEER "RemoveLocal", "RemoveLocal", kRightPeer,
     true},
    {Method::kStageFiles, ENGRAM_PEER "StageFiles", "StageFiles", kRightPeer,
     true},
    // Clients that hash token ids themselves (direct reads, cluster).
    {Method::kTokenModel, ENGRAM_PEER "TokenModel", "TokenModel", kRightRead,
     false},
};

#undef ENGRAM_PUBLIC
#undef ENGRAM_PEER

constexpr bool InOrder() {
  for (int i = 0; i < kNumMethods; ++i) {
    if (static_cast<int>(kMethods[i].method) != i) return false;
  }
  return true;
}
static_assert(InOrder(), "kMethods is indexed by Method");

}  // namespace

const MethodInfo& Describe(Method method) {
  return kMethods[static_cast<int>(method)];
}

const MethodInfo* FindMethod(absl::string_view path) {
  for (const MethodInfo& m : kMethods) {
    if (path == m.path) return &m;
  }
  return nullptr;
}

}  // namespace engram
