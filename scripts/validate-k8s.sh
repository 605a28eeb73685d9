#!/usr/bin/env bash
# Validate the Kubernetes manifests in deploy/kubernetes (one registry on a volume, with the token
# server) and deploy/kubernetes-scaleout (3 stateless replicas on S3 + PostgreSQL), each the same way:
#
#   1. kustomization.yaml lists exactly the manifest files of the directory;
#   2. every manifest validates against the Kubernetes schema in strict mode (unknown fields
#      are errors, unknown kinds too), with kubernetes-validate from PyPI installed into a
#      cached venv;
#   3. broken manifests are rejected (so the check cannot pass vacuously), and so is a broken
#      reference (a variable from a Secret key that does not exist);
#   4. references hold together (volumes and env -> ConfigMaps/Secrets/PVC and their keys,
#      Services and PodDisruptionBudgets -> pods and ports, probes -> ports) and every pod keeps
#      the required hardening;
#   5. each config.yml of the ConfigMaps is accepted by `berth check-config`, run on a copy of
#      the pod's file system built from the manifests and with the variables the pod gets
#      (Secrets replaced by working stand-ins), and the placeholder Secrets are refused; pods
#      with the blobs in S3 must have no PersistentVolumeClaim and more than one replica. Needs
#      a berth binary: $BERTH_BIN, else target/debug/berth; skipped with a message when there
#      is none.
#
# Usage: scripts/validate-k8s.sh            (from any directory; exit status 0 = all passed)
# Environment: BERTH_BIN (berth binary), PYTHON (interpreter for the venv, default python3),
#              XDG_CACHE_HOME (venv under $XDG_CACHE_HOME/berth-kubernetes-validate).
set -euo pipefail

KV_VERSION=1.37.0   # kubernetes-validate on PyPI
K8S_VERSION=1.37.0  # the newest Kubernetes schema kubernetes-validate 1.37.0 bundles

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
# The directories of manifests validated, with the berth subcommands their Deployments must run.
DIRS=(kubernetes kubernetes-scaleout)
declare -A EXPECT=([kubernetes]="serve,token-server" [kubernetes-scaleout]="serve")
DIR=$ROOT/deploy/kubernetes # the source of the broken-manifest cases
VENV=${XDG_CACHE_HOME:-$HOME/.cache}/berth-kubernetes-validate
PYTHON=${PYTHON:-python3}
if [[ -n ${BERTH_BIN:-} ]]; then
    BERTH=$BERTH_BIN
    [[ $BERTH == */* ]] || BERTH=$(command -v -- "$BERTH" || echo "$BERTH")
else
    BERTH=$ROOT/target/debug/berth
fi

START=$SECONDS
# ok, bad, note, checks_summary
# shellcheck source=scripts/lib/checks.sh
source "$ROOT/scripts/lib/checks.sh"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/validate-k8s.XXXXXX")
trap 'rm -rf -- "$TMP"' EXIT

# --- kubernetes-validate in a cached venv --------------------------------------------------
echo "== kubernetes-validate $KV_VERSION (venv $VENV)"
have_kv() {
    [[ -x $VENV/bin/kubernetes-validate ]] &&
        [[ $("$VENV/bin/kubernetes-validate" --version 2>/dev/null) == "$KV_VERSION" ]]
}
if have_kv; then
    note "reusing the venv"
else
    note "installing kubernetes-validate==$KV_VERSION from PyPI"
    rm -rf -- "$VENV"
    mkdir -p -- "$(dirname -- "$VENV")"
    if ! "$PYTHON" -m venv "$VENV" >"$TMP/venv.log" 2>&1; then
        # Debian without python3-venv has no ensurepip: make the venv without pip and install
        # into it with the system pip (pip >= 22.3 knows --python).
        rm -rf -- "$VENV"
        "$PYTHON" -m venv --without-pip "$VENV"
        "$PYTHON" -m pip --python "$VENV/bin/python" install --quiet --disable-pip-version-check \
            "kubernetes-validate==$KV_VERSION"
    else
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
            "kubernetes-validate==$KV_VERSION"
    fi
fi
if have_kv; then
    ok "kubernetes-validate $KV_VERSION ready"
else
    bad "kubernetes-validate $KV_VERSION could not be installed into $VENV"
    checks_summary validate-k8s
    exit 1
fi
KV=$VENV/bin/kubernetes-validate
PY=$VENV/bin/python # has PyYAML (a dependency of kubernetes-validate)

# --- the helper that reads the manifests ---------------------------------------------------
cat >"$TMP/k8s.py" <<'PYTHON'
"""Checks on a directory of manifests (deploy/kubernetes*) that need them parsed. Prints
"ok ..." / "FAIL ..." / "note ..." lines for the shell script to count."""
import base64, json, os, re, shutil, subprocess, sys
from urllib.parse import urlparse

import yaml

failures = 0


def ok(msg):
    print("ok " + msg)


def bad(msg):
    global failures
    failures += 1
    print("FAIL " + msg)


def note(msg):
    print("note " + msg)


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def kustomization(d):
    with open(os.path.join(d, "kustomization.yaml")) as f:
        k = yaml.safe_load(f) or {}
    res = k.get("resources") or []
    return k, res


def examples(d):
    """Files that are applied by hand, never by kustomize (the Secrets with placeholders)."""
    return sorted(f for f in os.listdir(d) if f.endswith((".example.yaml", ".example.yml")))


def manifests(d):
    """(file, doc) for every document of the files kustomization.yaml lists, and of the examples."""
    _, res = kustomization(d)
    out = []
    for r in list(res) + examples(d):
        p = os.path.join(d, r)
        if os.path.isfile(p):
            out += [(r, doc) for doc in load_docs(p)]
    return out


# --- kustomization ---------------------------------------------------------------------------
def cmd_kustomization(d):
    k, res = kustomization(d)
    if k.get("kind") != "Kustomization":
        bad("kustomization.yaml: kind is not Kustomization")
    if not res:
        bad("kustomization.yaml lists no resources")
    for key in k:
        if key not in ("apiVersion", "kind", "resources"):
            note(f"kustomization.yaml also has {key!r}: the per-file checks see the files without it")
    if len(set(res)) != len(res):
        bad("kustomization.yaml lists a file twice")
    missing = [r for r in res if not os.path.isfile(os.path.join(d, r))]
    for r in missing:
        bad(f"kustomization.yaml lists {r}, which does not exist")
    files = sorted(
        f for f in os.listdir(d)
        if f.endswith((".yaml", ".yml")) and f not in ("kustomization.yaml", "kustomization.yml", "Kustomization")
    )
    unlisted = [f for f in files if f not in res and f not in examples(d)]
    for f in unlisted:
        bad(f"{f} is not listed in kustomization.yaml")
    for f in examples(d):
        if f in res:
            bad(f"kustomization.yaml lists {f}: example files hold placeholders and must not be applied by kubectl apply -k")
    if not missing and not unlisted and res:
        ok(f"kustomization.yaml lists all {len(res)} manifest files: {', '.join(res)}")
    for f in files:
        print("file " + f)


def cmd_count(path):
    print(len(load_docs(path)))


# --- references and hardening ----------------------------------------------------------------
def index(docs):
    return {(doc.get("kind"), (doc.get("metadata") or {}).get("name")): doc for _, doc in docs}


def keys_of(obj):
    return set((obj.get("data") or {}).keys()) | set((obj.get("stringData") or {}).keys()) | set(
        (obj.get("binaryData") or {}).keys()
    )


def check_source(idx, kind, name, items, where, optional=False):
    obj = idx.get((kind, name))
    if obj is None:
        if optional:
            note(f"{where}: optional {kind} {name} is not in the manifests")
            return True
        bad(f"{where}: {kind} {name} is not in the manifests")
        return False
    have = keys_of(obj)
    good = True
    for it in items or []:
        if it.get("key") not in have:
            bad(f"{where}: {kind} {name} has no key {it.get('key')!r}")
            good = False
    return good


def cmd_refs(d):
    docs = manifests(d)
    idx = index(docs)
    namespaces = {n for (k, n) in idx if k == "Namespace"}
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding", "StorageClass", "PersistentVolume"}
    n_fail = failures
    for f, doc in docs:
        kind, meta = doc.get("kind"), doc.get("metadata") or {}
        if kind in cluster_scoped:
            continue
        if meta.get("namespace") not in namespaces:
            bad(f"{f}: {kind}/{meta.get('name')} is in namespace {meta.get('namespace')!r}, not one of the manifests' Namespaces {sorted(namespaces)}")
    if failures == n_fail:
        ok(f"all namespaced resources are in namespace {', '.join(sorted(namespaces))}, created by namespace.yaml")

    deployments = [(f, doc) for f, doc in docs if doc.get("kind") == "Deployment"]
    if not deployments:
        bad("no Deployment in the manifests")
    for f, dep in deployments:
        name = dep["metadata"]["name"]
        where = f"Deployment {name}"
        n_fail = failures
        spec = dep.get("spec") or {}
        pod = (spec.get("template") or {}).get("spec") or {}
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        sel = (spec.get("selector") or {}).get("matchLabels") or {}
        if not sel or any(labels.get(k) != v for k, v in sel.items()):
            bad(f"{where}: selector {sel} does not match the pod labels {labels}")
        # volumes
        vols = {v["name"]: v for v in pod.get("volumes") or []}
        for v in vols.values():
            vw = f"{where} volume {v['name']}"
            if "configMap" in v:
                check_source(idx, "ConfigMap", v["configMap"].get("name"), v["configMap"].get("items"), vw, v["configMap"].get("optional", False))
            elif "secret" in v:
                check_source(idx, "Secret", v["secret"].get("secretName"), v["secret"].get("items"), vw, v["secret"].get("optional", False))
            elif "projected" in v:
                for s in v["projected"].get("sources") or []:
                    if "secret" in s:
                        check_source(idx, "Secret", s["secret"].get("name"), s["secret"].get("items"), vw, s["secret"].get("optional", False))
                    elif "configMap" in s:
                        check_source(idx, "ConfigMap", s["configMap"].get("name"), s["configMap"].get("items"), vw, s["configMap"].get("optional", False))
            elif "persistentVolumeClaim" in v:
                check_source(idx, "PersistentVolumeClaim", v["persistentVolumeClaim"].get("claimName"), None, vw)
        # variables from Secrets and ConfigMaps
        for c in pod.get("containers") or []:
            for e in c.get("env") or []:
                ew = f"{where} container {c.get('name')} env {e.get('name')}"
                vf = e.get("valueFrom") or {}
                for kind, field in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                    if field in vf:
                        ref = vf[field]
                        check_source(idx, kind, ref.get("name"), [{"key": ref.get("key")}], ew, ref.get("optional", False))
            for e in c.get("envFrom") or []:
                for kind, field in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                    if field in e:
                        check_source(idx, kind, e[field].get("name"), None, f"{where} container {c.get('name')} envFrom", e[field].get("optional", False))
        # hardening the deployment promises
        if pod.get("automountServiceAccountToken") is not False:
            bad(f"{where}: automountServiceAccountToken is not false")
        if pod.get("enableServiceLinks") is not False:
            bad(f"{where}: enableServiceLinks is not false (Kubernetes would inject REGISTRY_* variables)")
        psc = pod.get("securityContext") or {}
        for k, v in (("runAsNonRoot", True), ("runAsUser", 65532), ("runAsGroup", 65532), ("fsGroup", 65532)):
            if psc.get(k) != v:
                bad(f"{where}: pod securityContext.{k} is {psc.get(k)!r}, not {v!r}")
        if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            bad(f"{where}: pod seccompProfile is not RuntimeDefault")
        containers = pod.get("containers") or []
        if not containers:
            bad(f"{where}: no containers")
        for c in containers:
            cw = f"{where} container {c.get('name')}"
            ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
            for m in c.get("volumeMounts") or []:
                if m.get("name") not in vols:
                    bad(f"{cw}: volumeMount {m.get('name')} names no volume")
                if m.get("subPath"):
                    bad(f"{cw}: volumeMount {m.get('name')} uses subPath (Secrets mounted with subPath are never updated)")
            sc = c.get("securityContext") or {}
            if sc.get("readOnlyRootFilesystem") is not True:
                bad(f"{cw}: readOnlyRootFilesystem is not true")
            if sc.get("allowPrivilegeEscalation") is not False:
                bad(f"{cw}: allowPrivilegeEscalation is not false")
            if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
                bad(f"{cw}: capabilities.drop is not [ALL]")
            if sc.get("runAsNonRoot") is False or sc.get("runAsUser", 65532) == 0:
                bad(f"{cw}: runs as root")
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (res.get(part) or {}):
                        bad(f"{cw}: no resources.{part}.{r}")
            for probe in ("readinessProbe", "livenessProbe"):
                p = c.get(probe)
                if not p or not ("httpGet" in p or "tcpSocket" in p):
                    bad(f"{cw}: no httpGet/tcpSocket {probe} (the image has no shell for exec probes)")
                    continue
                port = (p.get("httpGet") or p.get("tcpSocket")).get("port")
                if isinstance(port, str) and port not in ports:
                    bad(f"{cw}: {probe} port {port!r} is not a named containerPort")
                elif isinstance(port, int) and port not in ports.values():
                    bad(f"{cw}: {probe} port {port} is not a containerPort")
        if failures == n_fail:
            ok(f"{where}: volumes, selector, probes, resources and securityContext check out")

    for f, pdb in docs:
        if pdb.get("kind") != "PodDisruptionBudget":
            continue
        where = f"PodDisruptionBudget {pdb['metadata']['name']}"
        spec = pdb.get("spec") or {}
        sel = (spec.get("selector") or {}).get("matchLabels") or {}
        pods = [
            dep for _, dep in deployments
            if sel and all((dep["spec"]["template"]["metadata"].get("labels") or {}).get(k) == v for k, v in sel.items())
        ]
        if len(pods) != 1:
            bad(f"{where}: selector {sel} matches {len(pods)} Deployments, not 1")
            continue
        dep = pods[0]
        replicas = dep["spec"].get("replicas", 1)
        mu, ma = spec.get("maxUnavailable"), spec.get("minAvailable")
        if isinstance(mu, int) and not 0 < mu < replicas:
            bad(f"{where}: maxUnavailable {mu} with {replicas} replicas either blocks every drain or protects nothing")
        elif isinstance(ma, int) and not 0 < ma < replicas:
            bad(f"{where}: minAvailable {ma} with {replicas} replicas either blocks every drain or protects nothing")
        elif mu is None and ma is None:
            bad(f"{where}: neither maxUnavailable nor minAvailable")
        else:
            ok(f"{where} covers Deployment {dep['metadata']['name']} ({replicas} replicas, " + (f"maxUnavailable {mu})" if mu is not None else f"minAvailable {ma})"))

    for f, svc in docs:
        if svc.get("kind") != "Service":
            continue
        where = f"Service {svc['metadata']['name']}"
        sel = (svc.get("spec") or {}).get("selector") or {}
        pods = [
            dep for _, dep in deployments
            if sel and all((dep["spec"]["template"]["metadata"].get("labels") or {}).get(k) == v for k, v in sel.items())
        ]
        if len(pods) != 1:
            bad(f"{where}: selector {sel} matches {len(pods)} Deployments, not 1")
            continue
        dep = pods[0]
        cports = {}
        for c in dep["spec"]["template"]["spec"]["containers"]:
            for p in c.get("ports") or []:
                cports[p.get("name")] = p.get("containerPort")
        good = True
        for p in svc["spec"].get("ports") or []:
            t = p.get("targetPort", p.get("port"))
            if (isinstance(t, str) and t not in cports) or (isinstance(t, int) and t not in cports.values()):
                bad(f"{where}: targetPort {t!r} is not a port of Deployment {dep['metadata']['name']}")
                good = False
        if good:
            desc = ", ".join(f"{p.get('port')}->{p.get('targetPort')}" for p in svc["spec"].get("ports") or [])
            ok(f"{where} selects Deployment {dep['metadata']['name']} ({desc})")


# --- berth check-config on the pod's file system ----------------------------------------------
# Settings that name files or directories (docs/configuration.md).
FILE_SETTINGS = [
    "storage.filesystem.rootdirectory",
    "auth.htpasswd.path",
    "auth.secrets.directory",
    "accesscontrol.config",
    "auth.token.rootcertbundle",
    "auth.token.jwks",
    "auth.token.publickey",
    "auth.token.server.key",
    "auth.token.server.certificate",
    "database.sslrootcert",
    "database.sslcert",
    "database.sslkey",
]


def get_path(tree, dotted):
    cur = tree
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def set_path(tree, dotted, value):
    parts = dotted.split(".")
    cur = tree
    for part in parts[:-1]:
        cur = cur[part]
    cur[parts[-1]] = value


class StandIns:
    """Working stand-ins for Secret values, made with berth itself (the same commands as in the
    comment at the top of secrets.example.yaml), so the key, the JWKS and the htpasswd file parse and
    belong together."""

    def __init__(self, berth, work):
        self.berth, self.work = berth, work
        self.real = set()  # Secrets to take as written in the manifests
        os.makedirs(work, exist_ok=True)
        self.key = os.path.join(work, "token.pem")
        subprocess.run([berth, "keygen", "--alg", "rs256", "--key", self.key, "--cert", os.path.join(work, "token.crt")],
                       check=True, stdout=subprocess.DEVNULL)
        self.jwks = subprocess.run([berth, "jwks", "--key", self.key], check=True, capture_output=True).stdout
        self.htpasswd = subprocess.run([berth, "htpasswd", "--cost", "4", "admin"], input=b"stand-in-password\n",
                                       check=True, capture_output=True).stdout

    def value(self, secret, key):
        if key.endswith(".pem") or key == "tls.key":
            return open(self.key, "rb").read()
        if key.endswith(".crt"):
            return open(os.path.join(self.work, "token.crt"), "rb").read()
        if key == "jwks.json":
            return self.jwks
        if key == "htpasswd":
            return self.htpasswd
        if key == "username":
            return f"stand-in-{secret}\n".encode()
        if key == "password":
            return b"stand-in-password\n"
        if key in ("accesskey", "secretkey"):
            return f"stand-in-{secret}-{key}".encode()
        raise KeyError(f"no stand-in for key {key!r} of Secret {secret} (teach scripts/validate-k8s.sh)")


def object_bytes(obj, key):
    if key in (obj.get("stringData") or {}):
        return str(obj["stringData"][key]).encode()
    if key in (obj.get("data") or {}):
        v = obj["data"][key]
        return base64.b64decode(v) if obj.get("kind") == "Secret" else str(v).encode()
    return base64.b64decode(obj["binaryData"][key])


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def materialize_source(idx, kind, name, items, dest, standins, optional=False):
    """Write what Kubernetes would put into dest for one ConfigMap/Secret (or items of it)."""
    obj = idx.get((kind, name))
    if obj is None:
        if optional:
            return
        raise KeyError(f"{kind} {name} is not in the manifests")
    pairs = [(it["key"], it.get("path", it["key"])) for it in items] if items else [(k, k) for k in sorted(keys_of(obj))]
    for key, rel in pairs:
        if kind == "Secret" and standins is not None and name not in standins.real:
            data = standins.value(name, key)
        else:
            data = object_bytes(obj, key)
        write(os.path.join(dest, rel), data)


def build_pod_fs(idx, pod, container, root, standins):
    """The container's mounts under root. Returns {mountPath: (volume, readOnly)}."""
    vols = {v["name"]: v for v in pod.get("volumes") or []}
    mounts = {}
    for m in container.get("volumeMounts") or []:
        v = vols[m["name"]]
        dest = root + m["mountPath"]
        os.makedirs(dest, exist_ok=True)
        if "configMap" in v:
            materialize_source(idx, "ConfigMap", v["configMap"]["name"], v["configMap"].get("items"), dest, standins, v["configMap"].get("optional", False))
        elif "secret" in v:
            materialize_source(idx, "Secret", v["secret"]["secretName"], v["secret"].get("items"), dest, standins, v["secret"].get("optional", False))
        elif "projected" in v:
            for s in v["projected"].get("sources") or []:
                for kind, field in (("Secret", "secret"), ("ConfigMap", "configMap")):
                    if field in s:
                        materialize_source(idx, kind, s[field]["name"], s[field].get("items"), dest, standins, s[field].get("optional", False))
        elif "persistentVolumeClaim" in v or "emptyDir" in v:
            pass
        else:
            raise KeyError(f"volume {m['name']}: unsupported volume type for the simulation")
        mounts[m["mountPath"].rstrip("/")] = (v, bool(m.get("readOnly")))
    return mounts


def secrets_of(pod, container):
    """Names of the Secrets mounted into the container, in mount order."""
    vols = {v["name"]: v for v in pod.get("volumes") or []}
    out = []
    for m in container.get("volumeMounts") or []:
        v = vols.get(m["name"]) or {}
        if "secret" in v:
            out.append(v["secret"]["secretName"])
        for s in (v.get("projected") or {}).get("sources") or []:
            if "secret" in s:
                out.append(s["secret"]["name"])
    for e in container.get("env") or []:
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            out.append(ref["name"])
    for e in container.get("envFrom") or []:
        if "secretRef" in e:
            out.append(e["secretRef"]["name"])
    return list(dict.fromkeys(out))


def env_secret_vars(container, secret):
    """Names of the variables the container takes from the Secret."""
    return [e["name"] for e in container.get("env") or []
            if ((e.get("valueFrom") or {}).get("secretKeyRef") or {}).get("name") == secret]


def mount_of(mounts, path):
    best = None
    for mp in mounts:
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best):
                best = mp
    return best


def berth_args(c):
    """(subcommand, config path, --addr) of a berth container, or None if it is not one."""
    if c.get("command") not in (None, ["/berth"]):
        return None
    args = list(c.get("args") or ["serve"])
    sub, rest = args[0], args[1:]
    conf, addr = None, None
    i = 0
    while i < len(rest):
        a = rest[i]
        if a == "--config" and i + 1 < len(rest):
            conf, i = rest[i + 1], i + 2
            continue
        if a.startswith("--config="):
            conf = a.split("=", 1)[1]
        elif a == "--addr" and i + 1 < len(rest):
            addr, i = rest[i + 1], i + 2
            continue
        elif a.startswith("--addr="):
            addr = a.split("=", 1)[1]
        elif not a.startswith("-"):
            conf = a
        i += 1
    return sub, conf, addr


def rewrite_paths(cfg, mounts, root, where):
    """Point every file setting of cfg into the copy of the pod's file system under root.
    Each must be on a volume of the container, the storage on a writable one (the root file
    system is read-only). Returns False (after reporting) when one is not."""
    good = True
    for setting in FILE_SETTINGS:
        val = get_path(cfg, setting)
        if val is None:
            continue
        if isinstance(val, list):
            vals = [str(v) for v in val]
        elif setting == "auth.token.server.key":
            vals = [v.strip() for v in str(val).split(",")]
        else:
            vals = [str(val)]
        new = []
        for v in vals:
            m = mount_of(mounts, v) if v.startswith("/") else None
            if m is None:
                bad(f"{where}: {setting} = {v} is not on a volume mounted in the container")
                good = False
                continue
            vol, ro = mounts[m]
            if setting == "storage.filesystem.rootdirectory" and (ro or not ("persistentVolumeClaim" in vol or "emptyDir" in vol)):
                bad(f"{where}: {setting} = {v} is not on a writable volume")
                good = False
            new.append(root + v)
        set_path(cfg, setting, new if isinstance(val, list) else ",".join(new))
    return good


def container_env(idx, container, standins):
    """The variables Kubernetes would set: values, and keys of Secrets (stand-ins unless the
    Secret is in standins.real) and ConfigMaps. Other valueFrom kinds (fieldRef, ...) are left out."""
    env = {}
    for e in container.get("env") or []:
        if "value" in e:
            env[e["name"]] = str(e["value"])
            continue
        vf = e.get("valueFrom") or {}
        if "secretKeyRef" in vf:
            ref = vf["secretKeyRef"]
            obj = idx.get(("Secret", ref["name"]))
            if standins is not None and ref["name"] not in standins.real:
                env[e["name"]] = standins.value(ref["name"], ref["key"]).decode()
            elif obj is not None and ref["key"] in keys_of(obj):
                env[e["name"]] = object_bytes(obj, ref["key"]).decode()
        elif "configMapKeyRef" in vf:
            ref = vf["configMapKeyRef"]
            obj = idx.get(("ConfigMap", ref["name"]))
            if obj is not None and ref["key"] in keys_of(obj):
                env[e["name"]] = object_bytes(obj, ref["key"]).decode()
    return env


def run_check_config(berth, env, conf):
    p = subprocess.run([berth, "check-config", "--config", conf], env=env, capture_output=True, text=True)
    problems, infos = [], []
    for line in p.stderr.splitlines():
        try:
            j = json.loads(line)
            level, msg = j.get("level", ""), j.get("fields", {})
        except ValueError:
            m = re.search(r"\s(WARN|ERROR)\s", line)
            level, msg = (m.group(1) if m else "INFO"), {"message": line}
        if level in ("WARN", "ERROR") or line.startswith("berth:"):
            problems.append(line)
        infos.append(msg)
    return p, problems, infos


def port_of(addr, default):
    if not addr:
        return default
    return int(str(addr).rsplit(":", 1)[1])


def cmd_berth(d, berth, tmp, expect="serve,token-server"):
    expect = set(expect.split(","))
    docs = manifests(d)
    idx = index(docs)
    standins = StandIns(berth, os.path.join(tmp, "standins"))
    seen = {}  # subcommand -> parsed config, for the containers that passed
    tried = set()
    for f, dep in docs:
        if dep.get("kind") != "Deployment":
            continue
        pod = dep["spec"]["template"]["spec"]
        for c in pod.get("containers") or []:
            where = f"Deployment {dep['metadata']['name']} container {c['name']}"
            parsed = berth_args(c)
            if parsed is None:
                note(f"{where}: not a berth container, skipped")
                continue
            sub, conf, addr = parsed
            if sub not in expect:
                bad(f"{where}: unexpected subcommand {sub!r} (expected {sorted(expect)})")
                continue
            tried.add(sub)
            if not conf or not conf.startswith("/"):
                bad(f"{where}: name the configuration with --config /absolute/path (args: {c.get('args')})")
                continue
            root = os.path.join(tmp, f"pod-{dep['metadata']['name']}-{c['name']}")
            try:
                mounts = build_pod_fs(idx, pod, c, root, standins)
            except KeyError as e:
                bad(f"{where}: {e.args[0]}")
                continue
            mp = mount_of(mounts, conf)
            if mp is None or not os.path.isfile(root + conf):
                bad(f"{where}: {conf} is not a file of any volume mounted in the container")
                continue
            with open(root + conf) as fh:
                text = fh.read()
            cfg = yaml.safe_load(text) or {}
            if not rewrite_paths(cfg, mounts, root, where):
                continue
            with open(root + conf, "w") as fh:
                yaml.safe_dump(cfg, fh, sort_keys=False)
            p, problems, infos = run_check_config(berth, container_env(idx, c, standins), root + conf)
            if p.returncode != 0 or "configuration OK" not in p.stdout:
                bad(f"{where}: berth check-config exited {p.returncode}:")
                for line in (p.stderr.strip() or p.stdout.strip()).splitlines()[-10:]:
                    note("    " + line)
                continue
            if problems:
                bad(f"{where}: berth check-config warns:")
                for line in problems:
                    note("    " + line)
                continue
            if sub == "token-server" and not re.search(r"server: Some\(\s*TokenServerConfig", p.stdout):
                bad(f"{where}: berth token-server needs auth.token.server.enabled: true and auth.token.server.key")
                continue
            # The namespaces the projected volume provides are the ones berth loads.
            secrets_dir = get_path(cfg, "auth.secrets.directory")
            if secrets_dir:
                expected = sorted(n for n in os.listdir(secrets_dir) if not n.startswith("."))
                loaded = [i for i in infos if i.get("message") == "namespace credentials loaded"]
                got = loaded[0].get("namespaces", "") if loaded else ""
                if not expected or any(f'"{n}"' not in got for n in expected):
                    bad(f"{where}: berth loaded namespaces {got or '(none)'}, the volume has {expected}")
                    continue
                note(f"{where}: namespace credentials {', '.join(expected)} loaded from {get_path(cfg, 'auth.secrets.directory')[len(root):]}")
            # The listen port is a containerPort.
            cports = [p_.get("containerPort") for p_ in c.get("ports") or []]
            port = port_of(addr, 5001) if sub == "token-server" else port_of(get_path(cfg, "http.addr"), 5000)
            if port not in cports:
                bad(f"{where}: berth listens on {port}, the container ports are {cports}")
                continue
            if get_path(cfg, "storage.s3") is not None:
                claims = [v["name"] for v in pod.get("volumes") or [] if "persistentVolumeClaim" in v]
                replicas = dep["spec"].get("replicas", 1)
                if claims:
                    bad(f"{where}: blobs in S3, yet volumes {claims} are PersistentVolumeClaims: the replicas keep nothing local")
                    continue
                if replicas < 2:
                    bad(f"{where}: blobs in S3 and metadata in PostgreSQL, yet {replicas} replica")
                    continue
                note(f"{where}: storage.s3 bucket {get_path(cfg, 'storage.s3.bucket')}, database {get_path(cfg, 'database.host')}: {replicas} replicas, no PersistentVolumeClaim")
            ok(f"{where}: `berth {sub} --config {conf}` configuration accepted by berth check-config (port {port})")
            seen.setdefault(sub, []).append((where, cfg))

            # The placeholder of each Secret, with stand-ins for the others, must stop start-up
            # or disable what it is for (an empty namespace password): never work as a value.
            for secret in secrets_of(pod, c):
                proot = f"{root}-placeholder-{secret}"
                standins.real = {secret}
                try:
                    pm = build_pod_fs(idx, pod, c, proot, standins)
                    penv = container_env(idx, c, standins)
                finally:
                    standins.real = set()
                pcfg = yaml.safe_load(text) or {}
                rewrite_paths(pcfg, pm, proot, where)
                with open(proot + conf, "w") as fh:
                    yaml.safe_dump(pcfg, fh, sort_keys=False)
                pp, pproblems, _ = run_check_config(berth, penv, proot + conf)
                errors = [l for l in pp.stderr.splitlines() if l.startswith("berth:")]
                skipped = [l for l in pproblems if "skipping" in l]
                if pp.returncode != 0:
                    why = (errors[-1] if errors else pp.stderr.strip()[-200:]).replace(proot, "")
                    ok(f"{where}: placeholder of Secret {secret} stops start-up: {why}")
                elif skipped:
                    try:
                        why = json.loads(skipped[0])["fields"]["message"]
                    except (ValueError, KeyError):
                        why = skipped[0]
                    ok(f"{where}: placeholder of Secret {secret} is disabled: {why.replace(proot, '')}")
                elif env_secret_vars(c, secret) == ["REGISTRY_DATABASE_PASSWORD"] and penv.get("REGISTRY_DATABASE_PASSWORD") == "":
                    # check-config makes no connection, and an empty password is a valid setting
                    # (trust authentication): it cannot refuse it. A server that asks for a
                    # password refuses the empty one at start-up ("database.password: PostgreSQL
                    # refused the login ..."; tried by hand with scripts/lib/postgres.sh).
                    ok(f"{where}: placeholder of Secret {secret} is an empty REGISTRY_DATABASE_PASSWORD: accepted by check-config (no connection is made), refused at start-up by a PostgreSQL that asks for a password")
                else:
                    bad(f"{where}: berth accepts the placeholder of Secret {secret} as a working value")

    # registry and token server agree.
    if "serve" in seen and "token-server" in seen:
        (rw, reg), (tw, ts) = seen["serve"][0], seen["token-server"][0]
        good = True
        for s in ("auth.token.realm", "auth.token.service", "auth.token.issuer"):
            if get_path(reg, s) != get_path(ts, s):
                bad(f"{s} differs: {get_path(reg, s)!r} ({rw}) vs {get_path(ts, s)!r} ({tw})")
                good = False
        realm = str(get_path(reg, "auth.token.realm") or "")
        tpath = get_path(ts, "auth.token.server.path") or "/auth"
        if urlparse(realm).path != tpath:
            bad(f"the realm {realm} does not end in the token server's path {tpath}")
            good = False
        if good:
            ok(f"registry and token server agree: realm {realm}, service {get_path(reg, 'auth.token.service')}, issuer {get_path(reg, 'auth.token.issuer')}")
    elif {"serve", "token-server"} <= tried:
        note("registry/token server agreement not checked: a configuration above failed")
    elif tried != expect:
        bad(f"expected berth containers {sorted(expect)}, found {sorted(tried)}")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"kustomization": cmd_kustomization, "count": cmd_count, "refs": cmd_refs, "berth": cmd_berth}[cmd](*args)
    sys.exit(1 if failures else 0)
PYTHON

# Run a helper command and count its ok/FAIL lines. A helper that dies is a failure too.
HELPER_OUT=
helper() {
    local out rc=0 line
    out=$("$PY" "$TMP/k8s.py" "$@" 2>&1) || rc=$?
    HELPER_OUT=$out
    while IFS= read -r line; do
        case $line in
            "ok "*) ok "${line#ok }" ;;
            "FAIL "*) bad "${line#FAIL }" ;;
            "note "*) note "${line#note }" ;;
            "file "*) ;;
            *) note "$line" ;;
        esac
    done <<<"$out"
    if ((rc != 0)) && ! grep -q '^FAIL ' <<<"$out"; then
        bad "helper '$1' exited $rc"
    fi
    return 0
}

# kubernetes-validate prints one "passed" line per resource; ERROR lines for invalid ones, and
# only a WARN (exit 0) for a kind it has no schema for, or nothing at all for an empty file.
# So a file counts as valid only when every document has its "passed" line and nothing else
# was printed.
validate_file() { # FILE -> 0 if valid; the validator's complaints on stdout
    local file=$1 docs out rc=0 passed
    docs=$("$PY" "$TMP/k8s.py" count "$file") || { echo "cannot parse $file as YAML"; return 1; }
    out=$("$KV" -k "$K8S_VERSION" --strict "$file" 2>&1) || rc=$?
    passed=$(grep -c ' passed for resource ' <<<"$out" || true)
    if ((rc != 0)) || grep -v ' passed for resource ' <<<"$out" | grep -q . || ((passed != docs)) || ((docs == 0)); then
        grep -v ' passed for resource ' <<<"$out" | grep . || true
        echo "($passed of $docs documents passed, exit status $rc)"
        return 1
    fi
    grep -o 'for resource [^ ]*' <<<"$out" | sed 's/^for resource //' | paste -sd ' ' -
}

# Steps 1, 2, 4 and 5 for one directory of manifests (step 3, the broken manifests, runs once).
validate_dir() { # NAME: deploy/NAME, whose Deployments run the berth subcommands ${EXPECT[NAME]}
    local name=$1 dir=$ROOT/deploy/$1 f msg line
    local -a files
    # --- 1. kustomization
    echo "== [$name] kustomization ($dir)"
    if [[ ! -f $dir/kustomization.yaml ]]; then
        bad "$dir/kustomization.yaml is missing"
        return 0
    fi
    helper kustomization "$dir"
    mapfile -t files < <(sed -n 's/^file //p' <<<"$HELPER_OUT")
    if command -v kubectl >/dev/null 2>&1; then
        if kubectl kustomize "$dir" >"$TMP/kustomized-$name.yaml" 2>"$TMP/kustomize-$name.err"; then
            ok "kubectl kustomize builds $(grep -c '^kind:' "$TMP/kustomized-$name.yaml") resources"
        else
            bad "kubectl kustomize failed: $(tail -n 3 "$TMP/kustomize-$name.err")"
        fi
    else
        note "kubectl not found: not building the kustomization (the file checks above still ran)"
    fi

    # --- 2. schema validation
    echo "== [$name] Kubernetes $K8S_VERSION schema, strict (kubernetes-validate $KV_VERSION)"
    for f in "${files[@]}"; do
        if msg=$(validate_file "$dir/$f"); then
            ok "$f: $msg"
        else
            bad "$f did not validate:"
            while IFS= read -r line; do note "  $line"; done <<<"$msg"
        fi
    done

    # --- 4. references and hardening
    echo "== [$name] references between the manifests, pod hardening"
    helper refs "$dir"

    # --- 5. berth accepts the configuration
    echo "== [$name] berth check-config on each pod's files"
    if [[ -x $BERTH ]]; then
        note "using $BERTH ($("$BERTH" --version 2>/dev/null || echo 'version unknown'))"
        helper berth "$dir" "$BERTH" "$TMP/berth-$name" "${EXPECT[$name]}"
    else
        note "SKIPPED: no berth binary at $BERTH (build it with \`cargo build -p berth-server --bin berth\` or set BERTH_BIN)"
    fi
}

for name in "${DIRS[@]}"; do
    validate_dir "$name"
done

# --- 3. the validator rejects broken manifests -------------------------------------------------
echo "== broken manifests must be rejected"
expect_rejected() { # NAME FILE PATTERN: validation must fail with output matching PATTERN
    local name=$1 file=$2 pattern=$3 msg
    if msg=$(validate_file "$file"); then
        bad "$name was accepted: $msg"
    elif grep -q -- "$pattern" <<<"$msg"; then
        ok "$name rejected: $(grep -m1 -- "$pattern" <<<"$msg" | sed 's/^.*did not validate for //')"
    else
        bad "$name rejected, but not for the expected reason ($pattern): $msg"
    fi
}
# a) the real deployments.yaml with a misspelled field deep in a container.
if [[ -f $DIR/deployments.yaml ]] && grep -q 'readOnlyRootFilesystem:' "$DIR/deployments.yaml"; then
    sed 's/readOnlyRootFilesystem:/readOnlyRootFileSystem:/' "$DIR/deployments.yaml" >"$TMP/typo-deployments.yaml"
    expect_rejected "deployments.yaml with readOnlyRootFileSystem (misspelled)" "$TMP/typo-deployments.yaml" \
        "'readOnlyRootFileSystem' was unexpected"
else
    bad "deployments.yaml with readOnlyRootFilesystem not found: cannot build the misspelled-field case"
fi
# b) a small Deployment with a misspelled probe field.
cat >"$TMP/typo-probe.yaml" <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: {name: broken, namespace: registry}
spec:
  selector: {matchLabels: {app: broken}}
  template:
    metadata: {labels: {app: broken}}
    spec:
      containers:
        - name: broken
          image: berth:0.1.0
          readinesProbe: {httpGet: {path: /readyz, port: 5000}}
EOF
expect_rejected "Deployment with readinesProbe (misspelled)" "$TMP/typo-probe.yaml" "'readinesProbe' was unexpected"
# c) a misspelled kind: the validator only warns, the script must still fail it.
cat >"$TMP/typo-kind.yaml" <<'EOF'
apiVersion: v1
kind: Servce
metadata: {name: broken, namespace: registry}
spec:
  ports: [{port: 5000}]
EOF
expect_rejected "kind: Servce (no such kind)" "$TMP/typo-kind.yaml" "Couldn't find schema"
# d) a wrong type.
cat >"$TMP/wrong-type.yaml" <<'EOF'
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: broken, namespace: registry}
spec:
  accessModes: ReadWriteOnce
  resources: {requests: {storage: 20Gi}}
EOF
expect_rejected "PersistentVolumeClaim with accessModes as a string" "$TMP/wrong-type.yaml" "is not of type 'array'"

# e) a reference the refs check must catch: the scale-out Deployment taking the database password
#    from a key its Secret does not have.
echo "== broken references must be reported"
BROKEN=$TMP/broken-env-ref
cp -r -- "$ROOT/deploy/kubernetes-scaleout" "$BROKEN"
sed -i 's/key: password$/key: passwd/' "$BROKEN/deployment.yaml"
if cmp -s "$ROOT/deploy/kubernetes-scaleout/deployment.yaml" "$BROKEN/deployment.yaml"; then
    bad "deployment.yaml of kubernetes-scaleout has no 'key: password': cannot build the broken-reference case"
elif out=$("$PY" "$TMP/k8s.py" refs "$BROKEN" 2>&1); then
    bad "a secretKeyRef to a missing key was not reported: $(grep '^FAIL' <<<"$out" || echo 'no FAIL line')"
elif grep -q "has no key 'passwd'" <<<"$out"; then
    ok "secretKeyRef to a missing key reported: $(grep -m1 "has no key 'passwd'" <<<"$out" | sed 's/^FAIL //')"
else
    bad "the broken reference was reported, but not as a missing key: $(grep -m1 '^FAIL' <<<"$out")"
fi

echo "== done in $((SECONDS - START))s"
checks_summary validate-k8s
