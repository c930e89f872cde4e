// engramd: the engram-store server process.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/malloc_tuning.h"
#include "proto/channel_tuning.h"
#include "server/accept_guard.h"
#include "server/flags.h"
#include "server/log.h"
#include "server/server.h"

namespace {

// Writes the ports to a fresh temporary (O_EXCL | O_NOFOLLOW: never through
// a link someone planted, never into someone's file), then renames it over
// `path`, so readers never see a partial file.
absl::Status WritePortFile(const std::string& path, int grpc_port,
                           int metrics_port) {
  const std::string text = absl::StrCat("grpc_port=", grpc_port,
                                        "\nmetrics_port=", metrics_port, "\n");
  for (int attempt = 0; attempt < 16; ++attempt) {
    const std::string tmp =
        absl::StrCat(path, ".tmp.", getpid(), ".", std::random_device()());
    const int fd =
        open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
             0600);
    if (fd < 0 && errno == EEXIST) continue;
    if (fd < 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "--port_file: cannot create ", tmp, ": ", std::strerror(errno)));
    }
    const bool written = write(fd, text.data(), text.size()) ==
                         static_cast<ssize_t>(text.size());
    close(fd);
    if (!written || std::rename(tmp.c_str(), path.c_str()) != 0) {
      const int err = errno;
      unlink(tmp.c_str());
      return absl::FailedPreconditionError(absl::StrCat(
          "--port_file: cannot write ", path, ": ", std::strerror(err)));
    }
    return absl::OkStatus();
  }
  return absl::FailedPreconditionError(
      absl::StrCat("--port_file: no free temporary name next to ", path));
}

}  // namespace

int main(int argc, char** argv) {
  absl::StatusOr<engram::ServerConfig> config =
      engram::ParseServerFlags(argc, argv);
  if (!config.ok()) {
    std::cerr << "engramd: " << config.status().message() << "\n";
    return 2;
  }
  if (config->help) {
    std::cout << engram::ServerFlagsHelp();
    return 0;
  }
  engram::ResolveServerDefaults(&*config);
  engram::TuneMallocForLargeMessages();
  if (auto peers = engram::ClusterPeers(*config); !peers.ok()) {
    std::cerr << "engramd: " << peers.status().message() << "\n";
    return 2;
  }

  // Block the stop signals in every thread (threads inherit the mask) and
  // take them synchronously below: no async-signal-safety pitfalls.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGHUP);  // reloads credentials, see below
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  // Everything engramd creates (--data_dir tables, POSIX shared memory of
  // exported tables, the port file) is its user's only (docs/security.md).
  umask(077);

  engram::LogInfo(absl::StrCat(
      "starting: listen=", config->listen,
      " metrics_listen=", config->metrics_listen, " memory_limit_bytes=",
      config->memory_limit_bytes, " threads=", config->threads,
      " max_message_bytes=", config->max_message_bytes,
      " max_lookup_rows=", config->max_lookup_rows,
      " pin_memory=", config->pin_memory ? "true" : "false",
      " demo=", config->demo ? "true" : "false", " gpu=", config->gpu,
      config->peers.empty()
          ? std::string()
          : absl::StrCat(" shard_index=", config->shard_index, " peers=",
                         config->peers, " replication=", config->replication)));

  if (absl::Status s = engram::InstallAcceptGuard(
          config->max_open_files, config->reserved_fds,
          config->max_connections_per_address);
      !s.ok()) {
    engram::LogError(s.ToString());
    return 1;
  }
  engram::EngramServer server(*config);
  server.metrics()->AddGaugeSource(
      "engram_connections_refused_fds",
      "Connections refused because file descriptors ran short.",
      [] { return static_cast<double>(engram::ConnectionsRefusedForFds()); });
  server.metrics()->AddGaugeSource(
      "engram_connections_refused_per_address",
      "Connections refused because their address had "
      "--max_connections_per_address open.",
      [] {
        return static_cast<double>(engram::ConnectionsRefusedPerAddress());
      });
  server.metrics()->AddGaugeSource(
      "engram_open_file_limit", "The open-file limit engramd runs with.",
      [] { return static_cast<double>(engram::OpenFileLimit()); });
  if (absl::Status s = server.Start(); !s.ok()) {
    engram::LogError(s.ToString());
    return 1;
  }
  if (!config->port_file.empty()) {
    if (absl::Status s = WritePortFile(config->port_file, server.grpc_port(),
                                       server.metrics_port());
        !s.ok()) {
      engram::LogError(s.ToString());
      server.Shutdown();
      return 1;
    }
  }
  engram::LogInfo(absl::StrCat("serving engram.v1.EngramStore on port ",
                               server.grpc_port(), "; metrics on port ",
                               server.metrics_port()));

  int signal_number = 0;
  while (sigwait(&stop_signals, &signal_number) == 0 &&
         signal_number == SIGHUP) {
    engram::LogInfo("received SIGHUP: reloading credentials");
    server.ReloadCredentials();
  }
  engram::LogInfo(absl::StrCat("received ", strsignal(signal_number),
                               "; draining for up to ", config->drain_seconds,
                               " s"));
  server.Shutdown();
  engram::LogInfo("stopped");
  return 0;
}
