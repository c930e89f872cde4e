// Keeps engramd's listener accepting when file descriptors run out.
//
// gRPC 1.51's listener gives up for good after one accept4() failure with
// EMFILE/ENFILE (it logs "Failed accept4" and never re-arms; grpc/grpc
// issues 16058 and 20418): new clients and health probes then hang while
// old connections keep working. engramd therefore defines accept4() itself
// (accept_guard.cc, linked into the executable, so the dynamic linker binds
// libgrpc's calls to it): a connection that would leave fewer than
// `reserved_fds` descriptors free is accepted and closed at once, and on
// EMFILE a spare descriptor is given up to take the pending connection off
// the backlog and close it. gRPC then only ever sees success or EAGAIN.
// The same guard caps the connections one remote address holds open.
#ifndef ENGRAM_SERVER_ACCEPT_GUARD_H_
#define ENGRAM_SERVER_ACCEPT_GUARD_H_

#include <cstdint>

#include "absl/status/status.h"

namespace engram {

// Sets RLIMIT_NOFILE's soft limit to `max_open_files` (0: raise it to the
// hard limit) and arms the guard; connections beyond
// `max_per_address` open at once from one remote address (0: no cap) are
// accepted and closed at once. Call once, before serving.
absl::Status InstallAcceptGuard(int64_t max_open_files, int reserved_fds,
                                int max_per_address = 0);

// Connections refused so far because descriptors ran short.
int64_t ConnectionsRefusedForFds();
// Connections refused so far because their address had its cap open.
int64_t ConnectionsRefusedPerAddress();
// The soft RLIMIT_NOFILE in force.
int64_t OpenFileLimit();

}  // namespace engram

#endif  // ENGRAM_SERVER_ACCEPT_GUARD_H_
