"""Renders every kustomize target in deploy/k8s with `kubectl kustomize` and
checks what breaks deployments in practice: selectors match labels, every
container / probe / Service port is one engramd listens on, every flag is
one `engramd --help` lists, $(VAR) flags resolve from the ConfigMap, the
replica count agrees with --peers, the grace period covers the drain. Each
target's probes are run against a real engramd started with that target's
flags (TLS certificates, tokens and ports made here), the way kubelet runs
them (plaintext gRPC health checks); so are the image's HEALTHCHECK and the
compose file's.

Usage: manifests_test.py ENGRAMD_PATH ENGRAMCTL_PATH REPO_ROOT
"""
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest

import yaml

ENGRAMD = sys.argv[1]
ENGRAMCTL = sys.argv[2]
ROOT = sys.argv[3]
TARGETS = ["deploy/k8s/base", "deploy/k8s/overlays/gpu", "deploy/k8s/overlays/rdma",
           "deploy/k8s/overlays/checkpoint", "deploy/k8s/overlays/durable",
           "deploy/k8s/overlays/tls", "deploy/k8s/overlays/production",
           "deploy/k8s/overlays/single-node"]
# Flags a test engramd here cannot take as the pod has them: no GPU, no
# checkpoint volume, no other shards (the probes' port, service and
# credentials are what is checked).
UNRUNNABLE_FLAGS = {"gpu", "gpu_min_rows", "load", "load_root", "peers",
                    "shard_index", "replication"}


def engramd_flags():
    out = subprocess.run([ENGRAMD, "--help"], capture_output=True, text=True,
                         check=True).stdout
    return set(re.findall(r"^  --([a-z_]+)", out, re.M))


def render(target):
    out = subprocess.run(["kubectl", "kustomize", os.path.join(ROOT, target)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise AssertionError("kubectl kustomize %s failed: %s" % (target, out.stderr))
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def flag_args(args):
    """{name: value} of --name=value arguments (value None for bare flags)."""
    flags = {}
    for a in args:
        m = re.match(r"^--([a-z_]+)(?:=(.*))?$", a)
        if not m:
            raise AssertionError("argument %r is not a --flag" % a)
        flags[m.group(1)] = m.group(2)
    return flags


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Credentials:
    """A self-signed certificate for 127.0.0.1 and token files, in a folder."""

    def __init__(self, folder):
        self.folder = folder
        self.cert = os.path.join(folder, "tls.crt")
        self.key = os.path.join(folder, "tls.key")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=engramd", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", self.key, "-out", self.cert],
            check=True, capture_output=True)
        self.tokens = self.write("tokens", "read probe-reader %s\n" % ("r" * 32))
        self.cluster_token = self.write("cluster-token", "c" * 32 + "\n")

    def write(self, name, text):
        path = os.path.join(self.folder, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o600)
        return path

    def file_for(self, flag):
        return {"tokens_file": self.tokens, "cluster_token_file": self.cluster_token,
                "tls_cert_file": self.cert, "tls_key_file": self.key,
                "tls_ca_file": self.cert}.get(flag)


class LocalEngramd:
    """engramd started here with a pod's (or an image's) flags rewritten for
    this host: listeners on 127.0.0.1 free ports (`ports` maps the manifest's
    port to the one used here), credential files made here."""

    def __init__(self, args, folder, creds, keep=()):
        self.keep = set(keep)  # UNRUNNABLE_FLAGS to run anyway
        self.ports = {}
        self.port_file = os.path.join(folder, "ports")
        local = []
        for a in args:
            name, _, value = a[2:].partition("=")
            if name in UNRUNNABLE_FLAGS and name not in self.keep:
                continue
            if name in ("listen", "metrics_listen", "health_listen"):
                port = port_of(value)
                if port not in self.ports:
                    self.ports[port] = free_port() if port else 0
                value = "127.0.0.1:%d" % self.ports[port]
            elif name == "port_file":
                value = self.port_file
            elif name == "data_dir":
                value = os.path.join(folder, "data")
            elif name in ("load", "load_root") and name in self.keep:
                value = value.replace("/checkpoints", os.path.join(folder, "checkpoints"))
            elif creds.file_for(name):
                value = creds.file_for(name)
            local.append("--%s=%s" % (name, value))
        if not any(a.startswith("--port_file=") for a in local):
            local.append("--port_file=" + self.port_file)
        self.log = open(os.path.join(folder, "engramd.log"), "w+")
        self.process = subprocess.Popen([ENGRAMD] + local, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while not os.path.exists(self.port_file):
            if self.process.poll() is not None or time.time() > deadline:
                raise AssertionError("engramd %s did not start: %s" % (local, self.output()))
            time.sleep(0.05)

    def output(self):
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def run_until_ok(command, seconds=20):
    """Runs `command` until it exits 0 (a probe's retries); its last result."""
    deadline = time.time() + seconds
    while True:
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode == 0 or time.time() > deadline:
            return out
        time.sleep(0.2)


def dockerfile_instruction(name):
    """The exec-form JSON array of the Dockerfile's `name` (HEALTHCHECK: its CMD)."""
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        text = f.read().replace("\\\n", " ")
    pattern = r"^HEALTHCHECK .*?CMD (\[.*\])$" if name == "HEALTHCHECK" else \
        r"^%s (\[.*\])$" % name
    return yaml.safe_load(re.search(pattern, text, re.M).group(1))


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


@unittest.skipIf(shutil.which("kubectl") is None, "kubectl not installed")
class ManifestsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.known_flags = engramd_flags()
        cls.rendered = {t: render(t) for t in TARGETS}

    def by_kind(self, docs, kind):
        return [d for d in docs if d["kind"] == kind]

    def test_every_target_renders_the_expected_objects(self):
        for target, docs in self.rendered.items():
            kinds = sorted(d["kind"] for d in docs)
            self.assertEqual(kinds, ["ConfigMap", "PodDisruptionBudget", "Service",
                                     "Service", "ServiceMonitor", "StatefulSet"],
                             target)

    def test_selectors_match_pod_labels(self):
        for target, docs in self.rendered.items():
            (sts,) = self.by_kind(docs, "StatefulSet")
            pod_labels = sts["spec"]["template"]["metadata"]["labels"]
            self.assertTrue(matches(sts["spec"]["selector"]["matchLabels"], pod_labels))
            services = {s["metadata"]["name"]: s for s in self.by_kind(docs, "Service")}
            self.assertIn(sts["spec"]["serviceName"], services, target)
            self.assertEqual(services[sts["spec"]["serviceName"]]["spec"]["clusterIP"],
                             "None", "governing service must be headless")
            for s in services.values():
                self.assertTrue(matches(s["spec"]["selector"], pod_labels),
                                "%s: Service %s selects no engramd pod"
                                % (target, s["metadata"]["name"]))
            (pdb,) = self.by_kind(docs, "PodDisruptionBudget")
            self.assertTrue(matches(pdb["spec"]["selector"]["matchLabels"], pod_labels))
            (sm,) = self.by_kind(docs, "ServiceMonitor")
            scraped = [s for s in services.values()
                       if matches(sm["spec"]["selector"]["matchLabels"],
                                  s["metadata"].get("labels", {}))]
            self.assertEqual(len(scraped), 1, target)
            port_names = {p["name"] for p in scraped[0]["spec"]["ports"]}
            for ep in sm["spec"]["endpoints"]:
                self.assertIn(ep["port"], port_names)

    def test_ports_and_probes_are_ones_engramd_listens_on(self):
        for target, docs in self.rendered.items():
            (sts,) = self.by_kind(docs, "StatefulSet")
            pod = sts["spec"]["template"]
            (c,) = pod["spec"]["containers"]
            flags = flag_args(c["args"])
            listening = {port_of(flags[f]) for f in
                         ("listen", "metrics_listen", "health_listen") if f in flags}
            probe_port = port_of(flags.get("health_listen", flags["listen"]))
            named = {}
            for p in c["ports"]:
                self.assertIn(p["containerPort"], listening, target)
                named[p["name"]] = p["containerPort"]
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                spec = c[probe]
                port = spec["grpc"]["port"] if "grpc" in spec else spec["httpGet"]["port"]
                port = named.get(port, port)
                self.assertEqual(port, probe_port,
                                 "%s: %s must probe the plaintext health port"
                                 % (target, probe))
            for s in self.by_kind(docs, "Service"):
                for p in s["spec"]["ports"]:
                    target_port = named.get(p["targetPort"], p["targetPort"])
                    self.assertIn(target_port, listening, target)
            annotations = pod["metadata"]["annotations"]
            self.assertEqual(int(annotations["prometheus.io/port"]),
                             port_of(flags["metrics_listen"]))

    def test_every_flag_is_accepted_by_engramd(self):
        for target, docs in self.rendered.items():
            (sts,) = self.by_kind(docs, "StatefulSet")
            (c,) = sts["spec"]["template"]["spec"]["containers"]
            for name in flag_args(c["args"]):
                self.assertIn(name, self.known_flags,
                              "%s: --%s is not an engramd flag" % (target, name))

    def test_variable_flags_resolve_from_the_configmap(self):
        for target, docs in self.rendered.items():
            (cm,) = self.by_kind(docs, "ConfigMap")
            (sts,) = self.by_kind(docs, "StatefulSet")
            (c,) = sts["spec"]["template"]["spec"]["containers"]
            self.assertIn({"configMapRef": {"name": cm["metadata"]["name"]}}, c["envFrom"])
            defined = set(cm["data"]) | {e["name"] for e in c.get("env", [])}
            for a in c["args"]:
                for var in re.findall(r"\$\(([A-Z_]+)\)", a):
                    self.assertIn(var, defined, "%s: %s" % (target, a))

    def test_replicas_agree_with_peers_and_grace_covers_drain(self):
        for target, docs in self.rendered.items():
            (sts,) = self.by_kind(docs, "StatefulSet")
            (cm,) = self.by_kind(docs, "ConfigMap")
            (c,) = sts["spec"]["template"]["spec"]["containers"]
            flags = flag_args(c["args"])
            expand = lambda v: re.sub(r"\$\(([A-Z_]+)\)",
                                      lambda m: cm["data"].get(m.group(1), m.group(0)), v)
            peers = flags.get("peers")
            peers = expand(peers) if peers is not None else None
            replicas = sts["spec"]["replicas"]
            if not peers:
                self.assertEqual(replicas, 1,
                                 "%s: without --peers each pod is a separate store"
                                 % target)
            else:
                peers = peers.split(",")
                self.assertEqual(len(peers), replicas, target)
                grpc_port = port_of(flags["listen"])
                headless = sts["spec"]["serviceName"]
                name = sts["metadata"]["name"]
                self.assertEqual(
                    peers, ["%s-%d.%s:%d" % (name, i, headless, grpc_port)
                            for i in range(replicas)],
                    "%s: peers must be the pods' stable DNS names in ordinal order"
                    % target)
                self.assertLessEqual(int(expand(flags["replication"])), replicas)
                env = {e["name"]: e for e in c.get("env", [])}
                index_var = re.match(r"\$\(([A-Z_]+)\)", flags["shard_index"]).group(1)
                self.assertEqual(env[index_var]["valueFrom"]["fieldRef"]["fieldPath"],
                                 "metadata.labels['apps.kubernetes.io/pod-index']")
            self.assertEqual(c["livenessProbe"]["grpc"].get("service"), "engram.liveness",
                             "liveness must not follow cluster readiness")
            drain = float(cm["data"]["ENGRAM_DRAIN_SECONDS"])
            self.assertGreater(sts["spec"]["template"]["spec"]
                               ["terminationGracePeriodSeconds"], drain)

    def test_credentials_come_from_secrets_and_nothing_is_insecure(self):
        for target, docs in self.rendered.items():
            (sts,) = self.by_kind(docs, "StatefulSet")
            pod = sts["spec"]["template"]["spec"]
            (c,) = pod["containers"]
            flags = flag_args(c["args"])
            self.assertNotIn("insecure_allow_unauthenticated_remote", flags,
                             target)
            secrets = {v["name"]: v["secret"]["secretName"]
                       for v in pod["volumes"] if "secret" in v}
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            for flag in ("tokens_file", "cluster_token_file", "tls_cert_file",
                         "tls_key_file", "tls_ca_file"):
                if flag not in flags:
                    continue
                folder = os.path.dirname(flags[flag])
                self.assertIn(mounts.get(folder), secrets,
                              "%s: --%s is not read from a Secret" % (target, flag))
            self.assertIn("tokens_file", flags, target)
            # The Secret's files (mode 0440) must be readable by engramd's group.
            self.assertEqual(pod["securityContext"]["fsGroup"],
                             pod["securityContext"]["runAsGroup"], target)

    def test_probes_pass_against_an_engramd_configured_like_each_target(self):
        for target, docs in self.rendered.items():
            with self.subTest(target=target), tempfile.TemporaryDirectory() as folder:
                (cm,) = self.by_kind(docs, "ConfigMap")
                (sts,) = self.by_kind(docs, "StatefulSet")
                (c,) = sts["spec"]["template"]["spec"]["containers"]
                env = dict(cm["data"], ENGRAM_SHARD_INDEX="0")
                args = [re.sub(r"\$\(([A-Z_]+)\)", lambda m: env[m.group(1)], a)
                        for a in c["args"]]
                server = LocalEngramd(args, folder, Credentials(folder))
                try:
                    named = {p["name"]: p["containerPort"] for p in c["ports"]}
                    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                        grpc = c[probe]["grpc"]
                        port = server.ports[named.get(grpc["port"], grpc["port"])]
                        # kubelet: plaintext, no credentials, this service.
                        command = [ENGRAMCTL, "--address=127.0.0.1:%d" % port,
                                   "--timeout_s=2", "health"]
                        if grpc.get("service"):
                            command.append(grpc["service"])
                        out = run_until_ok(command)
                        self.assertEqual(out.returncode, 0, "%s %s: %s\n%s" % (
                            target, probe, out.stdout + out.stderr, server.output()))
                finally:
                    server.stop()

    def test_a_pod_terminated_while_loading_exits_within_its_grace_period(self):
        """A rollout (or a scale-down) may SIGTERM a pod of the checkpoint
        overlay while its --load runs: engramd must exit 0 well within
        terminationGracePeriodSeconds, not be killed (or crash: issue 25
        saw SIGSEGV in 9 of 12 tries)."""
        docs = self.rendered["deploy/k8s/overlays/checkpoint"]
        (cm,) = self.by_kind(docs, "ConfigMap")
        (sts,) = self.by_kind(docs, "StatefulSet")
        pod = sts["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        env = dict(cm["data"], ENGRAM_SHARD_INDEX="0")
        args = [re.sub(r"\$\(([A-Z_]+)\)", lambda m: env[m.group(1)], a)
                for a in c["args"]]
        with tempfile.TemporaryDirectory() as folder:
            checkpoints = os.path.join(folder, "checkpoints")
            os.mkdir(checkpoints)
            rows = 1 << 21  # 256 MiB of float32 [rows, 32]
            header = json.dumps({"t": {"dtype": "F32", "shape": [rows, 32],
                                       "data_offsets": [0, rows * 128]}}).encode()
            with open(os.path.join(checkpoints, "table.safetensors"), "wb") as f:
                f.write(len(header).to_bytes(8, "little") + header)
                f.truncate(8 + len(header) + rows * 128)
            with open(os.path.join(checkpoints, cm["data"]["ENGRAM_LOAD_MANIFEST"]),
                      "w") as f:
                json.dump({"layers": [{
                    "layer_id": 1, "dtype": "float32", "embedding_dim": 32,
                    "table_vocab_sizes": [rows],
                    "source": {"format": "safetensors", "files": ["table.safetensors"],
                               "tensors": ["t"]}}]}, f)
            grace = pod["terminationGracePeriodSeconds"]
            for delay in (0.0, 0.05, 0.2):
                server = LocalEngramd(args, folder, Credentials(folder),
                                      keep=("load", "load_root"))
                try:
                    time.sleep(delay)
                    start = time.time()
                    server.process.terminate()
                    code = server.process.wait(grace)
                    self.assertEqual(code, 0, server.output())
                    self.assertLess(time.time() - start, grace / 2, server.output())
                finally:
                    server.stop()
                os.remove(server.port_file)

    def test_image_healthcheck_follows_the_configured_port_with_tls_on(self):
        entrypoint = dockerfile_instruction("ENTRYPOINT")
        healthcheck = dockerfile_instruction("HEALTHCHECK")
        self.assertEqual(entrypoint[0], "engramd")
        self.assertEqual(healthcheck[0], "engramctl")
        port_file = flag_args(entrypoint[1:])["port_file"]
        cmd_listen = flag_args(dockerfile_instruction("CMD"))["listen"]
        with tempfile.TemporaryDirectory() as folder:
            creds = Credentials(folder)
            # Another port than CMD's, and TLS: what `docker run IMAGE args`
            # may give it.
            args = entrypoint[1:] + [
                "--listen=127.0.0.1:%d" % (port_of(cmd_listen) + 7),
                "--metrics_listen=127.0.0.1:0", "--tls_cert_file=x",
                "--tls_key_file=x", "--tokens_file=x"]
            server = LocalEngramd(args, folder, creds)
            try:
                command = [ENGRAMCTL] + [
                    "--port_file=" + server.port_file if a == "--port_file=" + port_file
                    else a for a in healthcheck[1:]]
                out = run_until_ok(command)
                self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
                self.assertIn("SERVING", out.stdout)
                # The gRPC port itself refuses a plaintext client.
                listen = server.ports[port_of(cmd_listen) + 7]
                plain = subprocess.run([ENGRAMCTL, "--address=127.0.0.1:%d" % listen,
                                        "--timeout_s=2", "health"], capture_output=True)
                self.assertNotEqual(plain.returncode, 0)
            finally:
                server.stop()

    def test_gpu_overlay_asks_for_a_gpu_and_enables_the_tier(self):
        (sts,) = self.by_kind(self.rendered["deploy/k8s/overlays/gpu"], "StatefulSet")
        (c,) = sts["spec"]["template"]["spec"]["containers"]
        self.assertEqual(c["resources"]["limits"]["nvidia.com/gpu"], 1)
        self.assertIn("gpu", flag_args(c["args"]))
        self.assertTrue(c["image"].endswith(":gpu"))

    def test_every_target_the_docs_apply_renders(self):
        named = set()
        for doc in ["README.md"] + ["docs/" + f for f in os.listdir(os.path.join(ROOT, "docs"))]:
            with open(os.path.join(ROOT, doc)) as f:
                named |= set(re.findall(r"kubectl apply -k (deploy/[\w/.-]+)", f.read()))
        self.assertIn("deploy/k8s/overlays/production", named)
        for target in sorted(named):
            render(target.rstrip("/"))  # raises naming the target

    def test_components_stack_gpu_durable_and_tls(self):
        docs = self.rendered["deploy/k8s/overlays/production"]
        (sts,) = self.by_kind(docs, "StatefulSet")
        pod = sts["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        flags = flag_args(c["args"])
        for flag in ("gpu", "data_dir", "tls_cert_file", "tokens_file", "health_listen"):
            self.assertIn(flag, flags)
        self.assertEqual(len(c["args"]), len(flags), "a flag given twice")
        self.assertEqual(c["resources"]["limits"]["nvidia.com/gpu"], 1)
        self.assertTrue(c["image"].endswith(":gpu"))
        self.assertEqual([t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]],
                         ["tables"])
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        self.assertTrue({"/data", "/etc/engram/tls", "/etc/engram/credentials",
                         "/tmp"} <= mounts, mounts)

    def test_single_node_overlay_is_one_pod_without_a_cluster(self):
        docs = self.rendered["deploy/k8s/overlays/single-node"]
        (sts,) = self.by_kind(docs, "StatefulSet")
        (cm,) = self.by_kind(docs, "ConfigMap")
        self.assertEqual(sts["spec"]["replicas"], 1)
        self.assertEqual(cm["data"]["ENGRAM_PEERS"], "")
        self.assertEqual(cm["data"]["ENGRAM_REPLICATION"], "1")

    def test_compose_file(self):
        with open(os.path.join(ROOT, "deploy/compose/compose.yaml")) as f:
            compose = yaml.safe_load(f)
        services = compose["services"]
        shards = [s for n, s in services.items() if n.startswith("engramd")]
        self.assertGreaterEqual(len(shards), 1)
        with open(os.path.join(ROOT, "deploy/compose/prometheus.yml")) as f:
            prom = yaml.safe_load(f)
        targets = [t for job in prom["scrape_configs"]
                   for sc in job["static_configs"] for t in sc["targets"]]
        for name, s in services.items():
            if not name.startswith("engramd"):
                continue
            for name_flag in flag_args(s["command"]):
                self.assertIn(name_flag, self.known_flags, name)
            metrics_port = port_of(flag_args(s["command"])["metrics_listen"])
            self.assertIn("%s:%d" % (name, metrics_port), targets)
            self.assertEqual(s["healthcheck"]["test"][1:],
                             ["engramctl"] + dockerfile_instruction("HEALTHCHECK")[1:],
                             "%s: the compose healthcheck is the image's" % name)
            flags = flag_args(s["command"])
            self.assertNotIn("insecure_allow_unauthenticated_remote", flags)
            for flag in ("tokens_file", "cluster_token_file"):
                secret = os.path.basename(flags[flag])
                self.assertEqual(flags[flag], "/run/secrets/" + secret, name)
                self.assertIn(secret, s["secrets"], name)
                self.assertIn(secret, compose["secrets"])
        self.assertIn("prometheus", services)
        self.assertIn("grafana", services)
        # Every file compose mounts is in the repository.
        for name, s in services.items():
            for volume in s.get("volumes", []):
                source = volume.split(":")[0]
                if source.startswith("."):
                    self.assertTrue(
                        os.path.exists(os.path.join(ROOT, "deploy/compose", source)),
                        "%s mounts %s, which is missing" % (name, source))


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
