#include "server/process_stats.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

namespace engram {
namespace {

// Seconds since the epoch at which the machine booted (/proc/stat btime).
double BootTimeSeconds() {
  std::ifstream in("/proc/stat");
  std::string key;
  while (in >> key) {
    if (key == "btime") {
      double btime = 0;
      in >> btime;
      return btime;
    }
    in.ignore(1 << 20, '\n');
  }
  return 0;
}

}  // namespace

ProcessStats ReadProcessStats() {
  ProcessStats stats;
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  {
    std::ifstream in("/proc/self/stat");
    std::string text((std::istreambuf_iterator<char>(in)),
                     std::istreambuf_iterator<char>());
    // The command name (field 2) may hold spaces: fields resume after
    // its closing parenthesis, with field 3 (state).
    const size_t close = text.rfind(')');
    if (close != std::string::npos && ticks > 0) {
      std::istringstream fields(text.substr(close + 2));
      std::string field;
      uint64_t utime = 0, stime = 0, start = 0, vsize = 0, rss = 0;
      for (int n = 3; fields >> field; ++n) {
        const uint64_t v = std::strtoull(field.c_str(), nullptr, 10);
        if (n == 14) utime = v;
        if (n == 15) stime = v;
        if (n == 22) start = v;
        if (n == 23) vsize = v;
        if (n == 24) {
          rss = v;
          break;
        }
      }
      stats.cpu_seconds = static_cast<double>(utime + stime) / ticks;
      stats.virtual_bytes = vsize;
      stats.resident_bytes = rss * page;
      stats.start_time_seconds =
          BootTimeSeconds() + static_cast<double>(start) / ticks;
    }
  }
  if (DIR* dir = opendir("/proc/self/fd")) {
    while (const dirent* entry = readdir(dir)) {
      if (entry->d_name[0] != '.') ++stats.open_fds;
    }
    closedir(dir);
    --stats.open_fds;  // the folder's own descriptor
  }
  struct rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0) {
    stats.max_fds = static_cast<int64_t>(limit.rlim_cur);
  }
  return stats;
}

}  // namespace engram
