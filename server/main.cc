// engramd: the engram-store server process.
#include <signal.h>
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "common/malloc_tuning.h"
#include "proto/channel_tuning.h"
#include "server/accept_guard.h"
#include "server/flags.h"
#include "server/log.h"
#include "server/server.h"

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

  if (absl::Status s = engram::InstallAcceptGuard(config->max_open_files,
                                                  config->reserved_fds);
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
      "engram_open_file_limit", "The open-file limit engramd runs with.",
      [] { return static_cast<double>(engram::OpenFileLimit()); });
  if (absl::Status s = server.Start(); !s.ok()) {
    engram::LogError(s.ToString());
    return 1;
  }
  if (!config->port_file.empty()) {
    // Write then rename so readers never see a partial file.
    const std::string tmp = config->port_file + ".tmp";
    {
      std::ofstream out(tmp);
      out << "grpc_port=" << server.grpc_port() << "\n"
          << "metrics_port=" << server.metrics_port() << "\n";
    }
    std::rename(tmp.c_str(), config->port_file.c_str());
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
