#include "transport/shm_permissions.h"

#include <sys/ipc.h>
#include <sys/shm.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"

namespace engram::transport {

absl::Status RestrictOwnSysvSegments(mode_t mode) {
  std::ifstream table("/proc/sysvipc/shm");
  if (!table) return absl::OkStatus();  // no System V IPC: nothing to do
  const pid_t self = getpid();
  std::string line;
  std::getline(table, line);  // the header
  while (std::getline(table, line)) {
    // key shmid perms size cpid lpid ...
    std::istringstream fields(line);
    long long key = 0, size = 0;
    int shmid = 0;
    unsigned perms = 0;
    pid_t cpid = 0;
    if (!(fields >> key >> shmid >> std::oct >> perms >> std::dec >> size >>
          cpid)) {
      continue;
    }
    if (cpid != self || (perms & 0777) == (mode & 0777)) continue;
    shmid_ds ds{};
    if (shmctl(shmid, IPC_STAT, &ds) != 0) continue;  // gone meanwhile
    ds.shm_perm.mode = (ds.shm_perm.mode & ~0777u) | (mode & 0777);
    if (shmctl(shmid, IPC_SET, &ds) != 0) {
      return absl::PermissionDeniedError(
          absl::StrCat("cannot restrict shared-memory segment ", shmid, ": ",
                       std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

}  // namespace engram::transport
