// Which of UCX's transports engram-store lets UCX open. UCX's TCP transport
// listens on every interface and emulates one-sided operations in software:
// it cannot enforce a read-only registration, so anyone who reaches its port
// can write anywhere in the process (docs/security.md, "UCX and RDMA").
// engram-store therefore leaves TCP out unless the operator names the one
// interface it may use. Pure functions of their inputs; no UCX types.
#ifndef ENGRAM_TRANSPORT_UCX_POLICY_H_
#define ENGRAM_TRANSPORT_UCX_POLICY_H_

#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace engram::transport {

// UCX configuration values to set (ucp_config_modify), overriding the
// environment's.
struct UcxSettings {
  std::string tls;                         // UCX_TLS
  std::optional<std::string> net_devices;  // UCX_NET_DEVICES, when set
};

// `env_tls` / `env_net_devices`: the operator's UCX_TLS / UCX_NET_DEVICES
// (null when unset). `same_host_only`: shared-memory transports only,
// whatever the environment says (single-node exports, same-host readers).
// `tcp_interface`: the interface TCP may use; empty: TCP is left out.
// FAILED_PRECONDITION when UCX_TLS selects TCP only and TCP is not allowed
// (saying how to allow it).
absl::StatusOr<UcxSettings> UcxSettingsFor(const char* env_tls,
                                           const char* env_net_devices,
                                           bool same_host_only,
                                           std::string_view tcp_interface);

// The network interface holding `host`'s address (a name or a numeric v4 /
// v6 address, as in --peers): "lo" for loopback. NOT_FOUND when no local
// interface has it.
absl::StatusOr<std::string> InterfaceOf(std::string_view host);

}  // namespace engram::transport

#endif  // ENGRAM_TRANSPORT_UCX_POLICY_H_
