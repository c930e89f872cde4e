// The build's version: the project version and, when built from a git
// checkout, `git describe` of the commit configured (e.g. "0.1.0 (g1a2b3c4)"
// or "... -dirty"). One string for --version, the engram_build_info metric,
// the ServerInfo call and engram_store.__version__.
#ifndef ENGRAM_COMMON_VERSION_H_
#define ENGRAM_COMMON_VERSION_H_

namespace engram {

const char* Version();

}  // namespace engram

#endif  // ENGRAM_COMMON_VERSION_H_
