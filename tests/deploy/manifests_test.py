"""Renders every kustomize target in deploy/k8s with `kubectl kustomize` and
checks what breaks deployments in practice: selectors match labels, every
container / probe / Service port is one engramd listens on, every flag is
one `engramd --help` lists, $(VAR) flags resolve from the ConfigMap, the
replica count agrees with --peers, the grace period covers the drain. Also
checks the compose file.

Usage: manifests_test.py ENGRAMD_PATH REPO_ROOT
"""
import os
import re
import shutil
import subprocess
import sys
import unittest

import yaml

ENGRAMD = sys.argv[1]
ROOT = sys.argv[2]
TARGETS = ["deploy/k8s/base", "deploy/k8s/overlays/gpu", "deploy/k8s/overlays/rdma",
           "deploy/k8s/overlays/checkpoint", "deploy/k8s/overlays/durable",
           "deploy/k8s/overlays/tls"]


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
            listening = {port_of(flags["listen"]), port_of(flags["metrics_listen"])}
            named = {}
            for p in c["ports"]:
                self.assertIn(p["containerPort"], listening, target)
                named[p["name"]] = p["containerPort"]
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                spec = c[probe]
                port = spec["grpc"]["port"] if "grpc" in spec else spec["httpGet"]["port"]
                port = named.get(port, port)
                self.assertEqual(port, port_of(flags["listen"]),
                                 "%s: %s must probe the gRPC health port" % (target, probe))
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
            replicas = sts["spec"]["replicas"]
            if peers is None:
                self.assertEqual(replicas, 1,
                                 "%s: without --peers each pod is a separate store"
                                 % target)
            else:
                peers = expand(peers).split(",")
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

    def test_gpu_overlay_asks_for_a_gpu_and_enables_the_tier(self):
        (sts,) = self.by_kind(self.rendered["deploy/k8s/overlays/gpu"], "StatefulSet")
        (c,) = sts["spec"]["template"]["spec"]["containers"]
        self.assertEqual(c["resources"]["limits"]["nvidia.com/gpu"], 1)
        self.assertIn("gpu", flag_args(c["args"]))
        self.assertTrue(c["image"].endswith(":gpu"))

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
            self.assertIn("healthcheck", s)
            flags = flag_args(s["command"])
            self.assertNotIn("insecure_allow_unauthenticated_remote", flags)
            for flag in ("tokens_file", "cluster_token_file"):
                secret = os.path.basename(flags[flag])
                self.assertEqual(flags[flag], "/run/secrets/" + secret, name)
                self.assertIn(secret, s["secrets"], name)
                self.assertIn(secret, compose["secrets"])
        self.assertIn("prometheus", services)


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
