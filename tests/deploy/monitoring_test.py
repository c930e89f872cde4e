"""Checks deploy/monitoring (the Grafana dashboard and the alert rules)
against real engramd processes: every metric the dashboard or the rules
name must be one engramd exports (scraped from a single node and from the
shards of a 2-shard cluster, after calls that make the call counters
appear); a real Prometheus (Debian's) scrapes them, evaluates every rule
without error and answers every dashboard query with data. Also: the
PrometheusRule equals the rule file, the alerts are the ones
docs/operations.md documents, the dashboard is well formed, and the
kustomize target renders both.

Usage: monitoring_test.py ENGRAMD_PATH ENGRAMCTL_PATH REPO_ROOT
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

import yaml

ENGRAMD = sys.argv[1]
ENGRAMCTL = sys.argv[2]
ROOT = os.path.abspath(sys.argv[3])
MONITORING = os.path.join(ROOT, "deploy/monitoring")
METRIC_NAME = re.compile(r"\b((?:engram|process)_[a-z_]+)\b")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def rule_file():
    with open(os.path.join(MONITORING, "engram-alerts.yml")) as f:
        return yaml.safe_load(f)


def dashboard():
    with open(os.path.join(MONITORING, "engram-dashboard.json")) as f:
        return json.load(f)


def panel_queries(dash):
    """(panel title, expr) of every query, Grafana's variables filled in as
    Grafana would for "All" engramd instances."""
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "1m")
            out.append((panel["title"], expr.replace("$instance", ".*")))
    return out


def rule_exprs():
    return [(r["alert"], r["expr"]) for g in rule_file()["groups"] for r in g["rules"]]


class Engramd:
    """engramd on loopback free ports; `flags` may use {port} for its own."""

    def __init__(self, folder, name, port, flags):
        self.port_file = os.path.join(folder, name + ".ports")
        self.log = open(os.path.join(folder, name + ".log"), "w+")
        self.address = "127.0.0.1:%d" % port
        self.process = subprocess.Popen(
            [ENGRAMD, "--listen=" + self.address, "--metrics_listen=127.0.0.1:0",
             "--port_file=" + self.port_file] + flags,
            stdout=self.log, stderr=subprocess.STDOUT)

    def wait(self):
        deadline = time.time() + 30
        while not os.path.exists(self.port_file):
            if self.process.poll() is not None or time.time() > deadline:
                self.log.seek(0)
                raise AssertionError("engramd did not start: " + self.log.read())
            time.sleep(0.05)
        with open(self.port_file) as f:
            ports = dict(line.strip().split("=", 1) for line in f if "=" in line)
        self.metrics = "127.0.0.1:" + ports["metrics_port"]

    def ctl(self, *args):
        return subprocess.run([ENGRAMCTL, "--address=" + self.address, "--timeout_s=10"]
                              + list(args), capture_output=True, text=True)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


class MonitoringTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.folder = tempfile.mkdtemp(prefix="engram-monitoring-")
        cluster_ports = [free_port(), free_port()]
        peers = ",".join("127.0.0.1:%d" % p for p in cluster_ports)
        cls.servers = [Engramd(cls.folder, "single", free_port(), ["--demo"])]
        cls.servers += [
            Engramd(cls.folder, "shard%d" % i, p,
                    ["--peers=" + peers, "--shard_index=%d" % i, "--replication=2"])
            for i, p in enumerate(cluster_ports)]
        for s in cls.servers:
            s.wait()
        single = cls.servers[0]
        # A good and a bad lookup: the call counters (created on first use)
        # and the latency histogram get samples.
        ok = single.ctl("lookup", "--layer=0", "--ids=1,2,3,4", "--shape=1,1,4")
        assert ok.returncode == 0, ok.stderr
        bad = single.ctl("lookup", "--layer=0", "--ids=1,2,3,99999", "--shape=1,1,4")
        assert bad.returncode != 0
        cls.exported = set()
        cls.histograms = set()
        for s in cls.servers:
            text = http_get("http://%s/metrics" % s.metrics)
            for m in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.M):
                cls.exported.add(m.group(1))
                if m.group(2) == "histogram":
                    cls.histograms.add(m.group(1))
            for m in re.finditer(r"^([a-z_]+)[{ ]", text, re.M):
                cls.exported.add(m.group(1))

    @classmethod
    def tearDownClass(cls):
        for s in cls.servers:
            s.stop()
        shutil.rmtree(cls.folder, ignore_errors=True)

    def family(self, name):
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name[:-len(suffix)] in self.histograms:
                return name[:-len(suffix)]
        return name

    def test_every_metric_named_is_one_engramd_exports(self):
        named = [("panel " + t, e) for t, e in panel_queries(dashboard())]
        named += [("alert " + a, e) for a, e in rule_exprs()]
        missing = []
        for where, expr in named:
            for name in METRIC_NAME.findall(expr):
                if name not in self.exported and self.family(name) not in self.exported:
                    missing.append("%s: %s" % (where, name))
        self.assertEqual(missing, [], "names engramd does not export")
        # The check can fail: a misspelt name is caught.
        self.assertNotIn("engram_lookup_rows", self.exported)

    def test_every_exported_metric_is_documented(self):
        with open(os.path.join(ROOT, "README.md")) as f:
            readme = f.read()
        undocumented = sorted(
            name for name in self.exported
            if METRIC_NAME.fullmatch(name) and self.family(name) == name
            and "`%s`" % name not in readme)
        self.assertEqual(undocumented, [], "metrics missing from README.md's table")

    def test_the_prometheus_rule_is_the_rule_file(self):
        with open(os.path.join(MONITORING, "prometheusrule.yaml")) as f:
            rule = yaml.safe_load(f)
        self.assertEqual(rule["kind"], "PrometheusRule")
        self.assertEqual(rule["spec"], rule_file())

    def test_the_alerts_are_the_documented_ones(self):
        with open(os.path.join(ROOT, "docs/operations.md")) as f:
            documented = set(re.findall(r"^\| (Engram[A-Za-z]+) \|", f.read(), re.M))
        self.assertEqual({a for a, _ in rule_exprs()}, documented)
        for group in rule_file()["groups"]:
            for r in group["rules"]:
                self.assertIn(r["labels"]["severity"], ("critical", "warning"), r["alert"])
                self.assertTrue(r["annotations"]["summary"], r["alert"])

    def test_the_dashboard_is_well_formed(self):
        dash = dashboard()
        ids = [p["id"] for p in dash["panels"]]
        self.assertEqual(len(ids), len(set(ids)), "panel ids must be unique")
        variables = {v["name"] for v in dash["templating"]["list"]}
        self.assertEqual(variables, {"datasource", "instance"})
        for panel in dash["panels"]:
            for key in ("h", "w", "x", "y"):
                self.assertIn(key, panel["gridPos"], panel["title"])
            if panel["type"] == "row":
                continue
            self.assertEqual(panel["datasource"]["uid"], "${datasource}", panel["title"])
            self.assertTrue(panel["targets"], panel["title"])
            for t in panel["targets"]:
                # Every query follows the engramd picker.
                self.assertIn('instance=~"$instance"', t["expr"], panel["title"])

    @unittest.skipIf(shutil.which("kubectl") is None, "kubectl not installed")
    def test_the_kustomize_target_renders_the_rule_and_the_dashboard(self):
        out = subprocess.run(["kubectl", "kustomize", MONITORING], capture_output=True,
                             text=True, check=True).stdout
        docs = {d["kind"]: d for d in yaml.safe_load_all(out) if d}
        self.assertEqual(set(docs), {"ConfigMap", "PrometheusRule"})
        cm = docs["ConfigMap"]
        self.assertEqual(cm["metadata"]["labels"]["grafana_dashboard"], "1")
        self.assertEqual(json.loads(cm["data"]["engram-dashboard.json"]), dashboard())
        self.assertEqual(docs["PrometheusRule"]["spec"], rule_file())

    @unittest.skipIf(shutil.which("promtool") is None, "promtool not installed")
    def test_promtool_accepts_the_rule_file(self):
        out = subprocess.run(["promtool", "check", "rules",
                              os.path.join(MONITORING, "engram-alerts.yml")],
                             capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)

    @unittest.skipIf(shutil.which("prometheus") is None, "prometheus not installed")
    def test_a_real_prometheus_evaluates_every_rule_and_panel(self):
        port = free_port()
        config = os.path.join(self.folder, "prometheus.yml")
        with open(config, "w") as f:
            yaml.safe_dump({
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [os.path.join(MONITORING, "engram-alerts.yml")],
                "scrape_configs": [{"job_name": "engramd", "static_configs": [
                    {"targets": [s.metrics for s in self.servers]}]}],
            }, f)
        log = open(os.path.join(self.folder, "prometheus.log"), "w+")
        prometheus = subprocess.Popen(
            ["prometheus", "--config.file=" + config,
             "--storage.tsdb.path=" + os.path.join(self.folder, "tsdb"),
             "--web.listen-address=127.0.0.1:%d" % port], stdout=log,
            stderr=subprocess.STDOUT)
        api = "http://127.0.0.1:%d/api/v1/" % port
        try:
            deadline = time.time() + 60
            while True:
                try:
                    targets = json.loads(http_get(api + "targets"))["data"]["activeTargets"]
                    if len(targets) == 3 and all(t["health"] == "up" for t in targets):
                        break
                except OSError:
                    pass
                if prometheus.poll() is not None or time.time() > deadline:
                    log.seek(0)
                    self.fail("Prometheus did not scrape all three: " + log.read()[-2000:])
                time.sleep(0.2)
            time.sleep(5)  # a few scrapes for rate() and a few rule evaluations

            groups = json.loads(http_get(api + "rules"))["data"]["groups"]
            evaluated = {r["name"]: r for g in groups for r in g["rules"]}
            self.assertEqual(set(evaluated), {a for a, _ in rule_exprs()})
            for name, r in evaluated.items():
                self.assertEqual(r["health"], "ok", "%s: %s" % (name, r.get("lastError")))

            empty = []
            for title, expr in panel_queries(dashboard()):
                answer = json.loads(http_get(api + "query?" + urllib.parse.urlencode(
                    {"query": expr})))
                self.assertEqual(answer["status"], "success", "%s: %s" % (title, expr))
                if not answer["data"]["result"]:
                    empty.append("%s: %s" % (title, expr))
            self.assertEqual(empty, [], "dashboard queries without data")
        finally:
            prometheus.terminate()
            prometheus.wait(30)
            log.close()


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
