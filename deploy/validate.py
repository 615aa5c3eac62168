#!/usr/bin/env python3
"""Offline checks of raftsql's Kubernetes manifests (deploy/), with no cluster.

    python3 deploy/validate.py [--dir DEPLOY_DIR] [--pydeps DIR] [--kubernetes-version V]
                               [--secrets SECRETS_YAML]

1. Reads each kustomization as kustomize would (resources, labels, JSON 6902 patches) for the
   base (deploy/base/) and the TLS overlay (deploy/tls/), and checks that deploy/ itself, what
   `kubectl apply -k deploy/` applies, is the TLS overlay; every listed resource must exist. Where
   kubectl is installed, `kubectl kustomize` must render the same objects, which proves this
   reading matches kustomize's.
2. Validates every object against the Kubernetes JSON schemas, strictly (unknown fields are
   errors), with the pinned kubernetes-validate, which it installs into --pydeps if needed
   (`pip install --target`; nothing outside that directory changes).
3. Checks the invariants the cluster relies on (quorum, identity, ports, probes, storage,
   security), on the base and on the overlay as it applies.

With --secrets (the secrets.yaml of deploy/make-secrets.sh) it also checks that every file the
TLS overlay points the server at is a key of the Secret mounted there, for every node id.

Prints `ok ...` or `FAIL ...` per check and `N passed, N failed`; exits 1 on a failed check,
2 when it cannot run at all (kubernetes-validate cannot be installed, a file does not parse).
tests/tests/deploy.rs runs it under `cargo nextest run`.
"""

import argparse
import copy
import fcntl
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

# kubernetes-validate and its dependencies, pinned together (installed with --no-deps) so a
# new release of any of them cannot change what passes.
PINS = [
    "kubernetes-validate==1.37.0",
    "jsonschema==4.26.0",
    "jsonschema-specifications==2025.9.1",
    "referencing==0.37.0",
    "rpds-py==2026.9.1",
    "attrs==26.1.0",
    "PyYAML==6.0.4",
    "typing-extensions==4.16.0",
    "importlib-resources==7.1.0",
    "packaging==26.4",
]
# The newest Kubernetes version kubernetes-validate 1.37.0 has schemas for.
# (persistentVolumeClaimRetentionPolicy needs 1.27 or later.)
KUBERNETES_VERSION = "1.37.0"
LABEL = ("app.kubernetes.io/name", "raftsql")
# What the server does on SIGTERM (server/src/node.rs): ask the API whether it is scaled away
# (KUBE_TIMEOUT, 3 s), hand leadership over (--handoff-timeout-ms, 3 s), leave the cluster
# (LEAVE_BUDGET, 12 s), drain (DRAIN, 10 s). The grace period must cover them plus shutting Raft
# down and flushing sled.
DRAIN_SECONDS = 10
SIGTERM_SECONDS = 3 + 3 + 12 + DRAIN_SECONDS
MIN_GRACE_SECONDS = SIGTERM_SECONDS + 5
# Share of the memory limit the server's own budgets (sled cache + query memory) may take:
# the rest is for everything they do not count (buffers, gRPC, the runtime).
MEMORY_BUDGET_SHARE = 0.75


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        # While set, passing checks are counted but not printed (a failure always is).
        self.quiet = False

    def check(self, cond, ok_text, fail_text=None):
        if cond:
            self.passed += 1
            if not self.quiet:
                print(f"ok {ok_text}")
        else:
            self.failed += 1
            print(f"FAIL {fail_text or ok_text}")
        return cond

    def ok(self, text):
        return self.check(True, text)

    def fail(self, text):
        return self.check(False, "", text)


class Fatal(Exception):
    """The checks cannot go on (nothing to check, a file that does not parse)."""


# --- kubernetes-validate -------------------------------------------------------------------


def ensure_kubernetes_validate(pydeps):
    """Makes the pinned packages importable from `pydeps`, installing them there if needed.

    The set is installed into a fresh directory and renamed into place, under a lock, so two
    runs at once, or one killed midway, never leave a half-installed set that looks complete.
    """
    want = "\n".join(PINS) + "\n"
    marker = pydeps / ".pins"

    def complete():
        return marker.is_file() and marker.read_text() == want

    if not complete():
        pydeps.parent.mkdir(parents=True, exist_ok=True)
        with open(pydeps.parent / (pydeps.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not complete():
                print(f"installing {PINS[0]} and its dependencies into {pydeps}", flush=True)
                fresh = pydeps.parent / f"{pydeps.name}.new-{os.getpid()}"
                shutil.rmtree(fresh, ignore_errors=True)
                cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                       "--no-deps", "--only-binary=:all:", "--target", str(fresh), *PINS]
                env = dict(os.environ, PIP_ROOT_USER_ACTION="ignore")
                try:
                    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
                except (OSError, subprocess.TimeoutExpired) as e:
                    raise Fatal(f"cannot install kubernetes-validate: {e}")
                if r.returncode != 0:
                    shutil.rmtree(fresh, ignore_errors=True)
                    raise Fatal(
                        f"cannot install kubernetes-validate (pip exited {r.returncode}):\n"
                        f"{r.stdout}{r.stderr}".rstrip())
                (fresh / ".pins").write_text(want)
                shutil.rmtree(pydeps, ignore_errors=True)
                os.rename(fresh, pydeps)
    sys.path.insert(0, str(pydeps))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pydeps), os.environ.get("PYTHONPATH")]))
    try:
        import kubernetes_validate.utils as kv
        import kubernetes_validate.version as kv_version
        import yaml  # noqa: F401 (PyYAML comes with the pinned set)
    except ImportError as e:
        raise Fatal(f"kubernetes-validate is not importable from {pydeps} after installing it: {e}")
    if kv_version.__version__ != PINS[0].split("==")[1]:
        raise Fatal(f"{pydeps} holds kubernetes-validate {kv_version.__version__}, not the pinned {PINS[0]}")
    return kv


# --- reading kustomizations ------------------------------------------------------------------


def load_yaml_docs(path):
    import yaml

    try:
        with open(path) as f:
            return [d for d in yaml.safe_load_all(f) if d is not None]
    except yaml.YAMLError as e:
        raise Fatal(f"{path} is not valid YAML: {e}")


def key(obj):
    return (obj.get("apiVersion"), obj.get("kind"), (obj.get("metadata") or {}).get("name"))


def show(obj):
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


# The kustomization fields this reading implements; any other is refused rather than ignored,
# so a field added later cannot make kustomize and this checker see different objects.
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "labels", "patches"}


def build(root, c, rel, seen):
    """The objects the kustomization in `root` renders, as kustomize would. Checks of a
    kustomization already in `seen` (a base read again under an overlay) are not printed again."""
    kfile = root / "kustomization.yaml"
    if not kfile.is_file():
        raise Fatal(f"{kfile} does not exist")
    docs = load_yaml_docs(kfile)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise Fatal(f"{kfile} must hold one mapping")
    k = docs[0]
    name = rel(kfile)
    was_quiet = c.quiet
    c.quiet = was_quiet or kfile in seen
    seen.add(kfile)
    unknown = set(k) - KUSTOMIZATION_FIELDS
    c.check(not unknown, f"{name} uses only fields validate.py implements",
            f"{name} uses {sorted(unknown)}, which validate.py does not implement: teach it, or its "
            f"reading and kustomize's would differ")
    objs = []
    for res in k.get("resources") or []:
        p = (root / res).resolve()
        if p.is_dir():
            c.ok(f"{name} lists {res}/, a directory")
            objs.extend(build(p, c, rel, seen))
        elif c.check(p.is_file(), f"{name} lists {res}, which exists", f"{name} lists {res}, which does not exist"):
            objs.extend(load_yaml_docs(p))
    for entry in k.get("labels") or []:
        pairs = entry.get("pairs") or {}
        for o in objs:
            o.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
            spec = o.get("spec") or {}
            if entry.get("includeSelectors"):
                sel = spec.get("selector")
                if isinstance(sel, dict) and o.get("kind") != "Service":
                    sel.setdefault("matchLabels", {}).update(pairs)
                elif o.get("kind") == "Service":
                    spec.setdefault("selector", {}).update(pairs)
            if (entry.get("includeSelectors") or entry.get("includeTemplates")) and "template" in spec:
                spec["template"].setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
    for patch in k.get("patches") or []:
        apply_patch(root, name, patch, objs, c)
    c.quiet = was_quiet
    return objs


def apply_patch(root, name, patch, objs, c):
    target = patch.get("target") or {}
    unsupported = set(target) - {"group", "version", "kind", "name"}
    if unsupported or "path" not in patch:
        c.fail(f"{name}: validate.py applies only JSON 6902 patch files aimed by group, version, kind "
               f"and name; this one has {sorted(set(patch) | set(target))}")
        return
    ops = load_yaml_docs(root / patch["path"])
    if len(ops) != 1 or not isinstance(ops[0], list):
        c.fail(f"{name}: {patch['path']} is not a JSON 6902 patch (a list of operations); "
               f"validate.py does not apply strategic merge patches")
        return
    api = f"{target['group']}/{target.get('version', '')}" if target.get("group") else target.get("version")
    hits = [o for o in objs
            if (not api or o.get("apiVersion") == api)
            and (not target.get("kind") or o.get("kind") == target["kind"])
            and (not target.get("name") or (o.get("metadata") or {}).get("name") == target["name"])]
    if not c.check(len(hits) == 1, f"{name}: {patch['path']} targets one object ({show(hits[0]) if hits else ''})",
                   f"{name}: {patch['path']} targets {len(hits)} objects, not one"):
        return
    try:
        for op in ops[0]:
            json_patch(hits[0], op)
        c.ok(f"{name}: {patch['path']} applies ({len(ops[0])} operations)")
    except (KeyError, IndexError, ValueError, TypeError) as e:
        c.fail(f"{name}: {patch['path']} does not apply: {e}")


def json_patch(doc, op):
    """Applies one RFC 6902 operation (add, remove, replace, test) to `doc` in place."""
    path = op["path"]
    if not path.startswith("/"):
        raise ValueError(f"path {path!r} does not start with /")
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]
    parent = doc
    for p in parts[:-1]:
        parent = parent[int(p)] if isinstance(parent, list) else parent[p]
    last = parts[-1]
    kind = op["op"]
    if kind == "test":
        here = parent[int(last)] if isinstance(parent, list) else parent[last]
        if here != op["value"]:
            raise ValueError(f"test at {path}: found {here!r}, not {op['value']!r}")
    elif kind == "add":
        value = copy.deepcopy(op["value"])
        if isinstance(parent, list):
            if last == "-":
                parent.append(value)
            else:
                parent.insert(int(last), value)
        else:
            parent[last] = value
    elif kind in ("remove", "replace"):
        at = int(last) if isinstance(parent, list) else last
        if isinstance(parent, dict) and at not in parent:
            raise KeyError(f"{kind} at {path}: nothing there")
        if kind == "remove":
            del parent[at]
        else:
            parent[at] = copy.deepcopy(op["value"])
    else:
        raise ValueError(f"operation {kind!r} at {path} is not implemented by validate.py")


def compare_with_kustomize(root, objs, name, c):
    """Renders `root` with `kubectl kustomize` and compares its objects with `objs`."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        print(f"skip comparing {name} with kustomize's rendering: kubectl is not installed")
        return
    try:
        r = subprocess.run([kubectl, "kustomize", str(root)], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        c.fail(f"kubectl kustomize {name} did not run: {e}")
        return
    if not c.check(r.returncode == 0, f"kubectl kustomize renders {name}",
                   f"kubectl kustomize {name} failed: {r.stderr.strip()}"):
        return
    import yaml

    theirs = {key(o): o for o in yaml.safe_load_all(r.stdout) if o}
    ours = {key(o): o for o in objs}
    differ = sorted(f"{k[1]}/{k[2]}" for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    c.check(not differ, f"kubectl kustomize renders {name} exactly as validate.py reads it ({len(ours)} objects)",
            f"kubectl kustomize renders {name} differently from validate.py's reading: {', '.join(differ)}")


# --- the invariants --------------------------------------------------------------------------


def quantity_bytes(q):
    """A Kubernetes memory quantity (`1Gi`, `512M`, `1000`) in bytes."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(q))
    if not m:
        raise ValueError(f"unreadable quantity {q!r}")
    scale = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[m.group(2)]
    return int(float(m.group(1)) * scale)


def port_of(addr):
    m = re.fullmatch(r".*:(\d+)", addr or "")
    return int(m.group(1)) if m else None


def scaled(value, total):
    """A PDB's maxUnavailable/minAvailable as a count; percentages round up, as Kubernetes does."""
    if isinstance(value, str) and value.endswith("%"):
        return -(-int(value[:-1]) * total // 100)
    return int(value)


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container_env(container, configmaps, c, where):
    """The container's environment as the kubelet builds it: envFrom first, then env on top."""
    env = {}
    for src in container.get("envFrom") or []:
        ref = (src.get("configMapRef") or {}).get("name")
        if ref is None:
            continue
        if c.check(ref in configmaps, f"{where}: envFrom names ConfigMap {ref}, which the manifests define",
                   f"{where}: envFrom names ConfigMap {ref}, which the manifests do not define: the pods would not start"):
            env.update({src.get("prefix", "") + k: str(v) for k, v in (configmaps[ref].get("data") or {}).items()})
    for e in container.get("env") or []:
        if "value" in e:
            env[e["name"]] = str(e["value"])
        ref = (e.get("valueFrom") or {}).get("configMapKeyRef")
        if ref:
            data = (configmaps.get(ref.get("name")) or {}).get("data") or {}
            if c.check(ref.get("key") in data, f"{where}: {e['name']} comes from ConfigMap {ref.get('name')}",
                       f"{where}: {e['name']} names key {ref.get('key')} of ConfigMap {ref.get('name')}, which is not there"):
                env[e["name"]] = str(data[ref["key"]])
    return env


def check_invariants(objs, variant, c):
    """Checks the invariants on one rendering; returns what check_tls_files needs (or None
    when there is no single StatefulSet with one container to look at)."""
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o.get("kind"), []).append(o)
    p = f"[{variant}]"
    for o in objs:
        labels = (o.get("metadata") or {}).get("labels") or {}
        c.check(labels.get(LABEL[0]) == LABEL[1], f"{p} {show(o)} is labelled {LABEL[0]}={LABEL[1]}")
    sets = by_kind.get("StatefulSet", [])
    if not c.check(len(sets) == 1, f"{p} one StatefulSet", f"{p} {len(sets)} StatefulSets, expected one"):
        return
    sts = sets[0]
    sts_name = sts["metadata"]["name"]
    spec = sts.get("spec") or {}
    replicas = spec.get("replicas", 1)
    pod_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    pod = (spec.get("template") or {}).get("spec") or {}
    containers = pod.get("containers") or []
    if not c.check(len(containers) == 1, f"{p} the pod has one container", f"{p} the pod has {len(containers)} containers, expected one"):
        return
    ctr = containers[0]
    ports = {q.get("name"): q.get("containerPort") for q in ctr.get("ports") or []}
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    configmaps = {m["metadata"]["name"]: m for m in by_kind.get("ConfigMap", [])}
    env = container_env(ctr, configmaps, c, f"{p} container {ctr.get('name')}")

    # Identity and peer discovery.
    c.check(spec.get("podManagementPolicy") == "Parallel",
            f"{p} podManagementPolicy is Parallel: the founders start together and wait for each other",
            f"{p} podManagementPolicy is {spec.get('podManagementPolicy', 'OrderedReady')}, not Parallel: "
            f"the founders wait for each other while OrderedReady starts the next pod only once one is ready, so the cluster never forms")
    c.check(selects((spec.get("selector") or {}).get("matchLabels"), pod_labels),
            f"{p} the StatefulSet's selector matches its pod labels")
    headless = services.get(spec.get("serviceName"))
    if c.check(headless is not None, f"{p} serviceName {spec.get('serviceName')} names a Service of the manifests",
               f"{p} serviceName {spec.get('serviceName')!r} names no Service of the manifests: pods get no DNS names"):
        hs = headless.get("spec") or {}
        c.check(hs.get("clusterIP") == "None", f"{p} Service {spec['serviceName']} is headless (clusterIP: None)",
                f"{p} Service {spec['serviceName']} (the StatefulSet's serviceName) is not headless: clusterIP must be None")
        c.check(hs.get("publishNotReadyAddresses") is True,
                f"{p} Service {spec['serviceName']} publishes not-ready addresses: peers find each other before any is ready",
                f"{p} Service {spec['serviceName']} lacks publishNotReadyAddresses: true: pods are ready only once a leader "
                f"is known, and without DNS names before that no leader is ever elected")
    replicas_env = env.get("RAFTSQL_STATEFULSET_REPLICAS")
    if c.check(replicas_env is not None and replicas_env.isdigit(),
               f"{p} RAFTSQL_STATEFULSET_REPLICAS is set ({replicas_env}): StatefulSet identity is on",
               f"{p} RAFTSQL_STATEFULSET_REPLICAS is {replicas_env!r}: without a number the pods have no identity"):
        founders = int(replicas_env)
        # More founders than pods: the founders wait forever for one that never starts. Fewer
        # is a cluster that was scaled up since its founding, which is allowed.
        c.check(founders <= replicas and founders >= 1,
                f"{p} RAFTSQL_STATEFULSET_REPLICAS ({founders}) <= spec.replicas ({replicas})"
                + ("" if founders == replicas else f": ordinals {founders}.. join the founders"),
                f"{p} RAFTSQL_STATEFULSET_REPLICAS ({founders}) > spec.replicas ({replicas}): the founders would wait "
                f"for ordinals that never start")
    template = env.get("RAFTSQL_STATEFULSET_HOST_TEMPLATE", "")
    c.check(template.startswith("{name}.") and template.split(".")[1:2] == [spec.get("serviceName")],
            f"{p} RAFTSQL_STATEFULSET_HOST_TEMPLATE {template} resolves through the headless Service",
            f"{p} RAFTSQL_STATEFULSET_HOST_TEMPLATE {template!r} must be {{name}}.{spec.get('serviceName')}[...]: "
            f"pods are reachable by name only under the StatefulSet's serviceName")

    # Ports: what the server listens on is what the pod and the Services expose.
    for var, port_name in (("RAFTSQL_LISTEN", "client"), ("RAFTSQL_PEER_LISTEN", "peer"), ("RAFTSQL_HTTP", "http")):
        got = port_of(env.get(var))
        c.check(got is not None and got == ports.get(port_name),
                f"{p} {var} listens on containerPort {port_name} ({got})",
                f"{p} {var} ({env.get(var)!r}) does not listen on containerPort {port_name} ({ports.get(port_name)})")
    for s in services.values():
        sn = s["metadata"]["name"]
        c.check(selects((s.get("spec") or {}).get("selector"), pod_labels), f"{p} Service {sn} selects the raftsql pods")
        for sp in (s.get("spec") or {}).get("ports") or []:
            t = sp.get("targetPort", sp.get("port"))
            c.check(t in ports or t in ports.values(), f"{p} Service {sn} port {sp.get('port')} targets containerPort {t}",
                    f"{p} Service {sn} port {sp.get('port')} targets {t!r}, which is no containerPort ({ports})")

    # Probes: liveness never asks for quorum; every probe reaches a real port.
    probes = {kind: ctr.get(kind) for kind in ("livenessProbe", "readinessProbe", "startupProbe")}
    paths = {}
    for kind, probe in probes.items():
        if not c.check(probe is not None and "httpGet" in probe, f"{p} {kind} is an httpGet probe",
                       f"{p} {kind} is missing or not an httpGet probe"):
            continue
        paths[kind] = probe["httpGet"].get("path")
        port = probe["httpGet"].get("port")
        c.check(port in ports or port in ports.values(), f"{p} {kind} port {port} names a containerPort",
                f"{p} {kind} port {port!r} names no containerPort ({sorted(ports)})")
    if len(paths) == 3:
        c.check(paths["livenessProbe"] != paths["readinessProbe"],
                f"{p} liveness ({paths['livenessProbe']}) and readiness ({paths['readinessProbe']}) differ",
                f"{p} liveness and readiness both ask {paths['livenessProbe']}: a cluster without quorum would be restarted")
        for kind in ("livenessProbe", "startupProbe"):
            c.check(paths[kind] != "/readyz" and not str(paths[kind]).startswith("/readyz?"),
                    f"{p} {kind} does not depend on quorum ({paths[kind]})",
                    f"{p} {kind} asks /readyz: it would restart nodes because the cluster lost its quorum, "
                    f"making the outage worse; use /healthz")

    # Disruptions keep a quorum.
    pdbs = by_kind.get("PodDisruptionBudget", [])
    if c.check(len(pdbs) == 1, f"{p} one PodDisruptionBudget", f"{p} {len(pdbs)} PodDisruptionBudgets, expected one"):
        ps = pdbs[0].get("spec") or {}
        c.check(selects((ps.get("selector") or {}).get("matchLabels"), pod_labels), f"{p} the PodDisruptionBudget selects the raftsql pods")
        quorum_loss = (replicas - 1) // 2
        if "maxUnavailable" in ps:
            down = scaled(ps["maxUnavailable"], replicas)
            c.check(down <= quorum_loss,
                    f"{p} PodDisruptionBudget maxUnavailable ({ps['maxUnavailable']}) keeps a quorum of {replicas} replicas",
                    f"{p} PodDisruptionBudget maxUnavailable ({ps['maxUnavailable']}) lets {down} of {replicas} voters go at "
                    f"once: more than (replicas-1)//2 = {quorum_loss}, below quorum")
        else:
            up = scaled(ps.get("minAvailable", 0), replicas)
            c.check(up >= replicas // 2 + 1,
                    f"{p} PodDisruptionBudget minAvailable ({ps.get('minAvailable')}) keeps a quorum of {replicas} replicas",
                    f"{p} PodDisruptionBudget minAvailable ({ps.get('minAvailable')}) is below a quorum ({replicas // 2 + 1}) "
                    f"of {replicas} replicas")

    # Storage.
    mounts = {m.get("name"): m for m in ctr.get("volumeMounts") or []}
    claims = [t["metadata"]["name"] for t in spec.get("volumeClaimTemplates") or []]
    data_dir = env.get("RAFTSQL_DATA_DIR")
    data_mounts = [mounts[n]["mountPath"] for n in claims if n in mounts]
    c.check(data_dir is not None and data_dir in data_mounts,
            f"{p} RAFTSQL_DATA_DIR ({data_dir}) is the volume claim's mount path",
            f"{p} RAFTSQL_DATA_DIR ({data_dir!r}) is not where a volumeClaimTemplate is mounted ({data_mounts}): "
            f"the data would live in the container and vanish with it")
    retention = spec.get("persistentVolumeClaimRetentionPolicy") or {}
    c.check(retention.get("whenScaled") == "Delete",
            f"{p} a scaled-down ordinal's volume is deleted (whenScaled: Delete)",
            f"{p} persistentVolumeClaimRetentionPolicy.whenScaled is {retention.get('whenScaled', 'Retain')}: a removed "
            f"node's volume would come back with the next scale-up, as a member it no longer is")
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    for n, m in mounts.items():
        c.check(n in volumes or n in claims, f"{p} volumeMount {n} ({m.get('mountPath')}) names a volume",
                f"{p} volumeMount {n} names no volume or volumeClaimTemplate")

    # Shutdown and resources.
    grace = pod.get("terminationGracePeriodSeconds", 30)
    c.check(grace >= MIN_GRACE_SECONDS,
            f"{p} terminationGracePeriodSeconds ({grace}) covers the {SIGTERM_SECONDS} s of scale-down check, "
            f"hand-off, leave and drain, and the shutdown after them",
            f"{p} terminationGracePeriodSeconds ({grace}) is under {MIN_GRACE_SECONDS}: the pod would be killed during "
            f"its hand-off, its leave, its {DRAIN_SECONDS} s drain or its final flush")
    limit = ((ctr.get("resources") or {}).get("limits") or {}).get("memory")
    budgets = [env.get("RAFTSQL_CACHE_BYTES"), env.get("RAFTSQL_MAX_NODE_MEMORY")]
    if c.check(limit is not None and all(b is not None for b in budgets),
               f"{p} a memory limit, and RAFTSQL_CACHE_BYTES and RAFTSQL_MAX_NODE_MEMORY set for it",
               f"{p} set a memory limit and, below it, RAFTSQL_CACHE_BYTES and RAFTSQL_MAX_NODE_MEMORY (the server's "
               f"defaults, 256 MiB and 1 GiB, are sized for a machine)"):
        used = sum(int(b) for b in budgets)
        c.check(used <= MEMORY_BUDGET_SHARE * quantity_bytes(limit),
                f"{p} sled cache + query memory ({used >> 20} MiB) fit in {MEMORY_BUDGET_SHARE:.0%} of the {limit} limit",
                f"{p} sled cache + query memory ({used >> 20} MiB) exceed {MEMORY_BUDGET_SHARE:.0%} of the {limit} "
                f"memory limit: the kernel would kill the pod before the server refuses a query")

    # Security.
    psc, csc = pod.get("securityContext") or {}, ctr.get("securityContext") or {}
    c.check(csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True
            and csc.get("runAsUser", psc.get("runAsUser")) not in (None, 0),
            f"{p} runs as a non-root user ({csc.get('runAsUser', psc.get('runAsUser'))})",
            f"{p} must set runAsNonRoot: true and a non-zero runAsUser")
    c.check(csc.get("readOnlyRootFilesystem") is True and csc.get("allowPrivilegeEscalation") is False
            and "ALL" in ((csc.get("capabilities") or {}).get("drop") or []),
            f"{p} read-only root filesystem, no privilege escalation, every capability dropped")
    c.check("command" not in ctr and "args" not in ctr,
            f"{p} no command or args: the image's entrypoint is the server, configured by environment",
            f"{p} the container sets command/args: the image has no shell, and every setting belongs in the environment")
    c.check(pod.get("enableServiceLinks") is False,
            f"{p} enableServiceLinks: false: no RAFTSQL_* variables from the Service named raftsql",
            f"{p} set enableServiceLinks: false: the Service raftsql would inject RAFTSQL_SERVICE_HOST, RAFTSQL_PORT, "
            f"... into the prefix the server reads its flags from")
    accounts = {a["metadata"]["name"]: a for a in by_kind.get("ServiceAccount", [])}
    sa_name = pod.get("serviceAccountName")
    sa = accounts.get(sa_name)
    c.check(sa is not None and sa.get("automountServiceAccountToken") is False,
            f"{p} ServiceAccount {sa_name} mounts its token into no pod by default",
            f"{p} serviceAccountName {sa_name!r} must name a ServiceAccount of the manifests with "
            f"automountServiceAccountToken: false (only raftsql's pods, which ask for it, get the token)")
    # The token the pods do mount may read this one StatefulSet and nothing else.
    roles = {r["metadata"]["name"]: r for r in by_kind.get("Role", [])}
    bound = [roles.get((b.get("roleRef") or {}).get("name")) for b in by_kind.get("RoleBinding", [])
             if any(s.get("kind") == "ServiceAccount" and s.get("name") == sa_name for s in b.get("subjects") or [])
             and (b.get("roleRef") or {}).get("kind") == "Role"]
    rules = [r for role in bound if role for r in role.get("rules") or []]
    only_get = rules == [{"apiGroups": ["apps"], "resources": ["statefulsets"], "resourceNames": [sts_name],
                          "verbs": ["get"]}]
    c.check(pod.get("automountServiceAccountToken") is True and only_get
            and not by_kind.get("ClusterRoleBinding"),
            f"{p} the pods' token may only get StatefulSet {sts_name} (to tell a scale-down from a restart)",
            f"{p} the pod must mount its ServiceAccount token (automountServiceAccountToken: true) bound by a "
            f"RoleBinding to a Role whose one rule is get on statefulsets/{sts_name}; found rules {rules}")

    return {"env": env, "mounts": mounts, "volumes": volumes, "sts_name": sts_name, "replicas": replicas}


def check_tls_files(ctx, variant, c, secrets):
    """Each TLS file the server is pointed at lies on a mounted Secret, under the name
    make-secrets.sh gives it; with `secrets`, the Secret holds it for every node id."""
    p = f"[{variant}]"
    env, mounts, volumes, sts_name, replicas = (ctx[k] for k in ("env", "mounts", "volumes", "sts_name", "replicas"))
    tls_vars = sorted(v for v in env if v.endswith(("_TLS_CERT", "_TLS_KEY", "_TLS_CA")) or v == "RAFTSQL_USERS_FILE")
    c.check(tls_vars or variant == "base", f"{p} the server is pointed at {len(tls_vars)} TLS and users files",
            f"{p} the overlay sets no RAFTSQL_*TLS* variable")
    for var in tls_vars:
        path = env[var]
        mount = next((m for m in mounts.values() if path.startswith(m["mountPath"].rstrip("/") + "/")), None)
        secret = ((volumes.get(mount["name"]) if mount else None) or {}).get("secret")
        if not c.check(secret is not None, f"{p} {var} ({path}) lies on a mounted Secret",
                       f"{p} {var} ({path}) lies on no mounted Secret"):
            continue
        sname = secret.get("secretName")
        c.check(sname in (f"{sts_name}-tls", f"{sts_name}-users"),
                f"{p} {var} comes from Secret {sname}, as make-secrets.sh names it",
                f"{p} {var} comes from Secret {sname!r}; make-secrets.sh writes {sts_name}-tls and {sts_name}-users")
        if secrets is None:
            continue
        keys = set(((secrets.get(sname) or {}).get("data") or {}))
        rel = path[len(mount["mountPath"].rstrip("/")) + 1:]
        wanted = [rel.replace("{id}", str(i)) for i in range(1, replicas + 1)] if "{id}" in rel else [rel]
        missing = [w for w in wanted if w not in keys]
        c.check(not missing, f"{p} {var}: Secret {sname} of --secrets holds {', '.join(wanted)}",
                f"{p} {var} ({path}): Secret {sname} of --secrets has no {', '.join(missing)} (it has {sorted(keys)})")


# --- main ------------------------------------------------------------------------------------


def main():
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, default=here, help="the deploy directory to check (default: this script's)")
    # target/tmp is cargo's CARGO_TARGET_TMPDIR: tests/tests/deploy.rs installs there too.
    ap.add_argument("--pydeps", type=Path, default=here.parent / "target" / "tmp" / "pydeps",
                    help="where the pinned kubernetes-validate is installed (default: target/tmp/pydeps)")
    ap.add_argument("--kubernetes-version", default=KUBERNETES_VERSION)
    ap.add_argument("--secrets", type=Path, help="deploy/make-secrets.sh's secrets.yaml, to check the TLS file names against")
    args = ap.parse_args()
    c = Checks()
    try:
        kv = ensure_kubernetes_validate(args.pydeps.resolve())
        root = args.dir.resolve()

        def rel(p):
            return os.path.relpath(p, root.parent)

        secrets = None
        if args.secrets:
            secrets = {d["metadata"]["name"]: d for d in load_yaml_docs(args.secrets) if d.get("kind") == "Secret"}
        seen = set()
        base = build(root / "base", c, rel, seen)
        compare_with_kustomize(root / "base", base, rel(root / "base"), c)
        tls = build(root / "tls", c, rel, seen)
        compare_with_kustomize(root / "tls", tls, rel(root / "tls"), c)
        default = build(root, c, rel, seen)
        c.check(default == tls,
                "the top kustomization.yaml (`kubectl apply -k deploy/`) applies the TLS overlay",
                "the top kustomization.yaml must apply the TLS overlay (resources: [tls]): the manifests "
                "use TLS and a users Secret by default; the plain base is deploy/base/")

        if args.kubernetes_version not in kv.all_versions():
            raise Fatal(f"kubernetes-validate has no schemas for Kubernetes {args.kubernetes_version}")
        base_by_key = {key(o): o for o in base}
        for variant, objs in (("base", base), ("tls", tls)):
            for o in objs:
                if variant == "tls" and base_by_key.get(key(o)) == o:
                    continue  # unchanged by the overlay: validated with the base
                try:
                    kv.validate(o, args.kubernetes_version, strict=True)
                    c.ok(f"[{variant}] {show(o)} validates against Kubernetes {args.kubernetes_version} (strict)")
                except kv.ValidationError as e:
                    where = ".".join(str(x) for x in e.path) or "(top)"
                    c.fail(f"[{variant}] {show(o)} does not validate against Kubernetes {args.kubernetes_version}: "
                           f"{where}: {e.message}")
                except (kv.SchemaNotFoundError, kv.VersionNotSupportedError, kv.InvalidSchemaError) as e:
                    c.fail(f"[{variant}] {show(o)}: no schema to validate it against: {e.message}")
        check_invariants(base, "base", c)
        # The overlay must keep every invariant of the base: those are counted, but only a
        # failure among them is printed.
        before = c.passed
        c.quiet = True
        ctx = check_invariants(tls, "tls", c)
        c.quiet = False
        print(f"ok [tls] the overlay keeps the base's invariants ({c.passed - before} checks)")
        if ctx is not None:
            check_tls_files(ctx, "tls", c, secrets)
    except Fatal as e:
        c.fail(str(e))
        print(f"{c.passed} passed, {c.failed} failed")
        return 2
    print(f"{c.passed} passed, {c.failed} failed")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
