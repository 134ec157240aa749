#!/usr/bin/env python3
"""Static checks of deploy/: the container files and the Kubernetes manifests.

  deploy_test.py --mesa BUILD/client/cli/mesa --build-dir BUILD --source REPO

No container engine and no Kubernetes API server is needed (none is on the CI machine:
`kubectl apply --dry-run=client` still asks a server for the API groups). What runs:
  1. our own schema checks of every manifest (python3-yaml): known apiVersion/kind pairs,
     selectors that match template labels, named container ports, probes on declared
     ports, mounted volumes that exist, referenced ConfigMap/Secret/PVC names and keys that
     exist, $(VAR) references that are defined, non-root security contexts, the
     single-writer coordinator (replicas 1, Recreate);
  2. cross-checks: every image the manifests name is the one deploy/container/README.md
     builds, every container port is EXPOSEd, every mount path exists in the image, the
     image's uid is the pods' runAsUser, every `mesa` flag the manifests and the container
     file pass appears in the built binary's `mesa SUBCOMMAND --help`, every file a flag
     names lies in a mounted volume (Secret files: a key of the Secret), ports in flags
     match the container ports and probes, the workers' --coordinator is the Service;
  3. the container file's runtime packages cover `ldd` of the built binary (dpkg -S);
  4. `kubectl kustomize` renders base and the cpu overlay when a kubectl >= 1.24 is on
     PATH (offline); otherwise our own check of the overlay's patch paths;
  5. a self-test: broken copies of the inputs (a port removed, a key misspelt, an unknown
     flag, a package dropped, ...) must each be reported, so these checks can fail.
Exit 0 when everything holds, 1 with one FAIL line per problem (file:line where known).
"""
import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys

try:
    import yaml
except ImportError:
    print("FAIL: python3-yaml is missing (scripts/setup.sh installs it)")
    sys.exit(1)

KNOWN_KINDS = {
    ("v1", "ConfigMap"), ("v1", "Secret"), ("v1", "Service"), ("v1", "PersistentVolumeClaim"),
    ("apps/v1", "Deployment"), ("apps/v1", "StatefulSet"), ("policy/v1", "PodDisruptionBudget"),
}
WORKLOADS = ("Deployment", "StatefulSet")
SANITIZER_PKG = re.compile(r"^lib(a|ub|t|l|hwa)san\d+$")
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
FLAG = re.compile(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)")
# Paths present in every image (no need to create them in the container file).
IMAGE_PATHS_ALWAYS = {"/tmp"}
# Stand-ins for values known only at run time (downward API).
FIELD_VALUES = {"status.podIP": "10.1.2.3", "metadata.name": "mesa-worker-abc12",
                "metadata.namespace": "default", "spec.nodeName": "node-1", "status.hostIP": "10.0.0.1"}


class Doc:
    """One YAML document of a manifest file, with where it starts."""

    def __init__(self, path, first_line, lines, obj):
        self.path, self.first_line, self.lines, self.obj = path, first_line, lines, obj

    def where(self, needle=None):
        """file:line of the first line of this document containing needle (or its start)."""
        if needle is not None:
            for i, line in enumerate(self.lines):
                if needle in line:
                    return f"{self.path}:{self.first_line + i}"
        return f"{self.path}:{self.first_line}"


def load_docs(path, rel, c):
    text = open(path, encoding="utf-8").read()
    docs, chunk, start = [], [], 1
    for n, line in enumerate(text.split("\n") + ["---"], start=1):
        if line.strip() == "---":
            body = "\n".join(chunk)
            try:
                obj = yaml.safe_load(body) if body.strip() else None
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                c.fail(f"{rel}:{start + (mark.line if mark else 0)}", f"not YAML: {getattr(e, 'problem', e)}")
                obj = None
            if obj is not None and not isinstance(obj, dict):
                c.fail(f"{rel}:{start}", "a document that is not a mapping")
            elif obj is not None:
                docs.append(Doc(rel, start, chunk, obj))
            chunk, start = [], n + 1
        else:
            chunk.append(line)
    return docs


def get(obj, *keys, default=None):
    for k in keys:
        if not isinstance(obj, dict) or k not in obj:
            return default
        obj = obj[k]
    return obj


def split_hostport(value):
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        return None, None
    return host, int(port)


def parse_mesa_args(args):
    """['worker', '--listen=X', '--x', 'v'] -> ('worker', [(flag, value, raw_token)])."""
    sub = args[0] if args and not args[0].startswith("-") else ""
    flags, i, rest = [], 0, args[1:] if sub else args
    while i < len(rest):
        tok = rest[i]
        if tok.startswith("--"):
            if "=" in tok:
                flag, value = tok.split("=", 1)
            elif i + 1 < len(rest) and not rest[i + 1].startswith("-"):
                flag, value = tok, rest[i + 1]
                i += 1
            else:
                flag, value = tok, None
            flags.append((flag, value, tok))
        i += 1
    return sub, flags


def dockerfile_instructions(text):
    """[(line, INSTRUCTION, rest)] with continuation lines joined and comments dropped."""
    out, buf, first = [], "", None
    for n, line in enumerate(text.split("\n"), start=1):
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):
            continue
        if first is None:
            first = n
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        word, _, rest = buf.partition(" ")
        out.append((first, word.upper(), rest.strip()))
        buf, first = "", None
    return out


def runtime_packages(text):
    m = re.search(r'ARG\s+MESA_RUNTIME_PACKAGES="([^"]*)"', text.replace("\\\n", " "))
    return set(m.group(1).split()) if m else None


class Checker:
    def __init__(self):
        self.errors = []

    def fail(self, where, msg):
        self.errors.append(f"{where}: {msg}")


# ------------------------------------------------------------------ manifests

def check_manifests(c, docs, secret_templates, ctx):
    """Schema and reference checks of one set of manifests (base, or an overlay's output)."""
    by_kind = {}
    seen = set()
    for d in docs:
        o = d.obj
        api, kind, name = o.get("apiVersion"), o.get("kind"), get(o, "metadata", "name")
        if (api, kind) not in KNOWN_KINDS:
            c.fail(d.where("kind:"), f"unknown apiVersion/kind {api}/{kind}")
            continue
        if not isinstance(name, str) or not DNS1123.match(name) or len(name) > 63:
            c.fail(d.where("name:"), f"metadata.name {name!r} is not a DNS-1123 label")
            continue
        if get(o, "metadata", "namespace") is not None:
            c.fail(d.where("namespace:"), "manifests must be namespace-neutral (no metadata.namespace)")
        if (kind, name) in seen:
            c.fail(d.where("name:"), f"{kind} {name} defined twice")
        seen.add((kind, name))
        by_kind.setdefault(kind, {})[name] = d
    configmaps = {n: (get(d.obj, "data", default={}) or {}) for n, d in by_kind.get("ConfigMap", {}).items()}
    for n, data in configmaps.items():
        for k, v in data.items():
            if not isinstance(v, str):
                c.fail(by_kind["ConfigMap"][n].where(f"{k}:"), f"ConfigMap {n} value of {k} is not a string (quote it)")
    secrets = {}
    for d in list(by_kind.get("Secret", {}).values()) + secret_templates:
        keys = set((get(d.obj, "data", default={}) or {}).keys()) | set((get(d.obj, "stringData", default={}) or {}).keys())
        secrets[d.obj["metadata"]["name"]] = keys
    pvcs = {}
    for n, d in by_kind.get("PersistentVolumeClaim", {}).items():
        modes = get(d.obj, "spec", "accessModes", default=[]) or []
        if not modes:
            c.fail(d.where(), f"PersistentVolumeClaim {n} has no accessModes")
        if not get(d.obj, "spec", "resources", "requests", "storage"):
            c.fail(d.where(), f"PersistentVolumeClaim {n} requests no storage")
        pvcs[n] = modes

    workloads = {}
    for kind in WORKLOADS:
        for n, d in by_kind.get(kind, {}).items():
            workloads[n] = d
            check_workload(c, d, configmaps, secrets, pvcs, ctx)
    # Services: selectors match a workload, target ports exist.
    services = {}
    for n, d in by_kind.get("Service", {}).items():
        sel = get(d.obj, "spec", "selector", default={}) or {}
        targets = [w for w in workloads.values() if sel and labels_match(sel, template_labels(w))]
        if not targets:
            c.fail(d.where("selector:"), f"Service {n} selects no pod template ({sel})")
        ports = {}
        for p in get(d.obj, "spec", "ports", default=[]) or []:
            if not p.get("name"):
                c.fail(d.where("port:"), f"Service {n}: every port needs a name")
            tp = p.get("targetPort", p.get("port"))
            for w in targets:
                cports = container_ports(w)
                if not any(tp == cp["name"] or tp == cp["containerPort"] for cp in cports):
                    c.fail(d.where(f"targetPort: {tp}"),
                           f"Service {n} port {p.get('name')}: targetPort {tp} is no container port of {w.obj['metadata']['name']}")
            ports[p.get("port")] = (tp, targets)
        services[n] = ports
    for n, d in by_kind.get("PodDisruptionBudget", {}).items():
        sel = get(d.obj, "spec", "selector", "matchLabels", default={}) or {}
        if not any(labels_match(sel, template_labels(w)) for w in workloads.values()):
            c.fail(d.where("selector:"), f"PodDisruptionBudget {n} selects no pod template")
    # The workers' --coordinator must be a Service port that reaches a coordinator's --listen.
    for w in workloads.values():
        for cont in pod_spec(w).get("containers", []) or []:
            sub, flags = parse_mesa_args(cont.get("args", []) or [])
            for flag, value, raw in flags:
                if flag != "--coordinator" or value is None:
                    continue
                host, port = split_hostport(value)
                if host not in services:
                    c.fail(w.where(raw), f"--coordinator {value}: no Service named {host!r}")
                elif port not in services[host]:
                    c.fail(w.where(raw), f"--coordinator {value}: Service {host} has no port {port}")
                else:
                    tp, targets = services[host][port]
                    for t in targets:
                        listen_ports = listen_ports_of(t)
                        cport = next((cp["containerPort"] for cp in container_ports(t)
                                      if tp in (cp["name"], cp["containerPort"])), None)
                        if cport not in listen_ports.get("--listen", set()):
                            c.fail(w.where(raw), f"--coordinator {value}: Service {host} port {port} -> container port "
                                   f"{cport}, but {t.obj['metadata']['name']} does not --listen on it")
    return by_kind


def pod_spec(w):
    return get(w.obj, "spec", "template", "spec", default={}) or {}


def template_labels(w):
    return get(w.obj, "spec", "template", "metadata", "labels", default={}) or {}


def labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def container_ports(w):
    out = []
    for cont in pod_spec(w).get("containers", []) or []:
        out += cont.get("ports", []) or []
    return out


def listen_ports_of(w):
    out = {}
    for cont in pod_spec(w).get("containers", []) or []:
        _, flags = parse_mesa_args(cont.get("args", []) or [])
        for flag, value, _ in flags:
            if flag.endswith("listen") and value:
                _, port = split_hostport(value)
                out.setdefault(flag, set()).add(port)
    return out


def check_workload(c, d, configmaps, secrets, pvcs, ctx):
    o, name = d.obj, d.obj["metadata"]["name"]
    sel = get(o, "spec", "selector", "matchLabels", default={}) or {}
    labels = template_labels(d)
    if not sel or not labels_match(sel, labels):
        c.fail(d.where("matchLabels:"), f"{name}: selector {sel} does not match the template labels {labels}")
    spec = pod_spec(d)
    volumes = {v.get("name"): v for v in spec.get("volumes", []) or []}
    psc = spec.get("securityContext", {}) or {}
    if psc.get("runAsNonRoot") is not True:
        c.fail(d.where("securityContext"), f"{name}: pod securityContext.runAsNonRoot must be true")
    if ctx.get("uid") is not None and psc.get("runAsUser") != ctx["uid"]:
        c.fail(d.where("runAsUser"), f"{name}: runAsUser {psc.get('runAsUser')} is not the image's uid {ctx['uid']}")
    # Volumes that point at objects.
    rwo_claims = []
    for vn, v in volumes.items():
        if "persistentVolumeClaim" in v:
            claim = get(v, "persistentVolumeClaim", "claimName")
            if claim not in pvcs:
                c.fail(d.where(f"claimName: {claim}"), f"{name}: volume {vn} claims {claim!r}: no such PersistentVolumeClaim")
            elif "ReadWriteOnce" in pvcs[claim] or "ReadWriteOncePod" in pvcs[claim]:
                rwo_claims.append(claim)
        if "configMap" in v:
            cm = get(v, "configMap", "name")
            if cm not in configmaps:
                c.fail(d.where(f"name: {cm}"), f"{name}: volume {vn}: no ConfigMap {cm!r}")
        if "secret" in v:
            sn = get(v, "secret", "secretName")
            if sn not in secrets:
                c.fail(d.where(f"secretName: {sn}"), f"{name}: volume {vn}: no Secret {sn!r} (nor a template of it)")
            else:
                for it in get(v, "secret", "items", default=[]) or []:
                    if it.get("key") not in secrets[sn]:
                        c.fail(d.where(f"key: {it.get('key')}"), f"{name}: volume {vn}: Secret {sn} has no key {it.get('key')!r}")
    # A ReadWriteOnce store has one writer: one replica, and the old pod gone before the new one.
    if rwo_claims:
        replicas = get(o, "spec", "replicas", default=1)
        strategy = get(o, "spec", "strategy", "type")
        if replicas != 1 or (o["kind"] == "Deployment" and strategy != "Recreate"):
            c.fail(d.where("replicas:"), f"{name} mounts ReadWriteOnce {rwo_claims}: needs replicas: 1 and strategy Recreate "
                   f"(has replicas {replicas}, strategy {strategy})")
    containers = spec.get("containers", []) or []
    if not containers:
        c.fail(d.where(), f"{name}: no containers")
    for cont in containers:
        check_container(c, d, name, cont, containers, volumes, configmaps, secrets, ctx)
    # Prometheus annotations point at a declared metrics port.
    ann = get(o, "spec", "template", "metadata", "annotations", default={}) or {}
    if ann.get("prometheus.io/scrape") == "true":
        p = ann.get("prometheus.io/port")
        if not any(str(cp["containerPort"]) == str(p) for cp in container_ports(d)):
            c.fail(d.where("prometheus.io/port"), f"{name}: prometheus.io/port {p} is no container port")
        elif int(p) not in listen_ports_of(d).get("--metrics-listen", set()):
            c.fail(d.where("prometheus.io/port"), f"{name}: prometheus.io/port {p} is not the --metrics-listen port")


def check_container(c, d, wname, cont, containers, volumes, configmaps, secrets, ctx):
    cname = cont.get("name")
    where = f"{wname}/{cname}"
    image = cont.get("image")
    if ctx.get("image") and image != ctx["image"]:
        c.fail(d.where("image:"), f"{where}: image {image!r} is not the image the container README builds ({ctx['image']!r})")
    if cont.get("command") and cont["command"][0] != "mesa":
        c.fail(d.where("command:"), f"{where}: command {cont['command']} bypasses the image's ENTRYPOINT [\"mesa\"]")
    # Ports: named, unique.
    ports = cont.get("ports", []) or []
    names = [p.get("name") for p in ports]
    for p in ports:
        n = p.get("name")
        if not n or not PORT_NAME.match(n) or len(n) > 15:
            c.fail(d.where(f"containerPort: {p.get('containerPort')}"), f"{where}: port {p.get('containerPort')} needs a name (<= 15 chars, lowercase)")
        if not isinstance(p.get("containerPort"), int):
            c.fail(d.where("containerPort"), f"{where}: containerPort {p.get('containerPort')!r} is not a number")
    if len(set(names)) != len(names):
        c.fail(d.where("ports:"), f"{where}: duplicate port names {names}")
    declared = {p.get("containerPort") for p in ports} | set(names)
    # Probes on declared ports.
    probe_ports = set()
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        pr = cont.get(probe)
        if not pr:
            continue
        for mech in ("grpc", "httpGet", "tcpSocket"):
            if mech in pr:
                port = pr[mech].get("port")
                probe_ports.add(port)
                if port not in declared:
                    c.fail(d.where(probe), f"{where}: {probe} {mech} port {port} is not a declared container port")
    if ctx.get("require_probes"):
        for probe in ("livenessProbe", "readinessProbe"):
            if "grpc" not in (cont.get(probe) or {}):
                c.fail(d.where(), f"{where}: needs a gRPC {probe} on the health port")
    csc = cont.get("securityContext", {}) or {}
    if csc.get("readOnlyRootFilesystem") is not True:
        c.fail(d.where(), f"{where}: securityContext.readOnlyRootFilesystem should be true")
    if csc.get("allowPrivilegeEscalation") is not False:
        c.fail(d.where(), f"{where}: securityContext.allowPrivilegeEscalation should be false")
    # Environment: referenced objects and keys exist; values for $(VAR) expansion.
    env = {}
    for e in cont.get("env", []) or []:
        n, vf = e.get("name"), e.get("valueFrom")
        if vf is None:
            env[n] = str(e.get("value", ""))
        elif "configMapKeyRef" in vf:
            ref = vf["configMapKeyRef"]
            if ref.get("name") not in configmaps:
                c.fail(d.where(f"name: {n}"), f"{where}: env {n}: no ConfigMap {ref.get('name')!r}")
            elif ref.get("key") not in configmaps[ref["name"]]:
                c.fail(d.where(f"name: {n}"), f"{where}: env {n}: ConfigMap {ref['name']} has no key {ref.get('key')!r}")
            else:
                env[n] = str(configmaps[ref["name"]][ref["key"]])
        elif "secretKeyRef" in vf:
            ref = vf["secretKeyRef"]
            if ref.get("key") not in secrets.get(ref.get("name"), set()):
                c.fail(d.where(f"name: {n}"), f"{where}: env {n}: no Secret key {ref.get('name')}/{ref.get('key')}")
            env[n] = "secret"
        elif "fieldRef" in vf:
            fp = vf["fieldRef"].get("fieldPath")
            if fp not in FIELD_VALUES:
                c.fail(d.where(f"name: {n}"), f"{where}: env {n}: unsupported fieldPath {fp!r}")
            env[n] = FIELD_VALUES.get(fp, "")
        elif "resourceFieldRef" in vf:
            ref = vf["resourceFieldRef"]
            if ref.get("containerName", cname) not in {x.get("name") for x in containers}:
                c.fail(d.where(f"name: {n}"), f"{where}: env {n}: no container {ref.get('containerName')!r}")
            lim = get(cont, "resources", *ref.get("resource", "").split("."))
            if lim is None:
                c.fail(d.where(f"name: {n}"), f"{where}: env {n}: {ref.get('resource')} is not set in resources")
            env[n] = str(lim)
    # Mounts: volumes exist; remember what each path holds.
    mounts = []
    for m in cont.get("volumeMounts", []) or []:
        vn = m.get("name")
        if vn not in volumes:
            c.fail(d.where(f"name: {vn}"), f"{where}: volumeMount {vn!r} names no volume of the pod")
            continue
        mounts.append((m.get("mountPath", ""), m, volumes[vn]))
        path = m.get("mountPath", "")
        if ctx.get("image_paths") is not None and path not in IMAGE_PATHS_ALWAYS and path not in ctx["image_paths"]:
            c.fail(d.where(f"mountPath: {path}"), f"{where}: mount path {path} is not created in the container file")
    # mesa's arguments.
    args = cont.get("args", []) or []
    for i, a in enumerate(args):
        for var in VAR_REF.findall(a):
            if var not in env:
                c.fail(d.where(a), f"{where}: {a!r} uses $({var}), which is not in the container's env")
    sub, flags = parse_mesa_args(args)
    resolved = [(f, VAR_REF.sub(lambda m: env.get(m.group(1), m.group(0)), v) if v else v, raw) for f, v, raw in flags]
    help_flags = ctx.get("help", {})
    if sub not in help_flags and help_flags:
        c.fail(d.where(sub), f"{where}: `mesa {sub}` is not a subcommand of the built binary")
    for flag, value, raw in resolved:
        if help_flags and sub in help_flags and flag not in help_flags[sub]:
            c.fail(d.where(raw), f"`mesa {sub}` has no flag {flag} (not in `mesa {sub} --help`)")
        if value and flag.endswith("listen"):
            host, port = split_hostport(value)
            if port is None:
                c.fail(d.where(raw), f"{where}: {flag} {value!r} is not HOST:PORT")
                continue
            if port not in {p.get("containerPort") for p in ports}:
                c.fail(d.where(raw), f"{where}: {flag} port {port} is not a declared container port")
            if flag == "--health-listen" and probe_ports and not probe_ports & {port, *[p.get("name") for p in ports if p.get("containerPort") == port]}:
                c.fail(d.where(raw), f"{where}: probes {probe_ports} do not check the --health-listen port {port}")
            if flag == "--listen" and sub == "worker" and host in ("127.0.0.1", "localhost", "::1", "[::1]"):
                c.fail(d.where(raw), f"{where}: a worker's --listen {value} is unreachable from other pods")
        if value and value.startswith("/") and flag not in ("--listen",):
            check_path(c, d, where, flag, value, raw, mounts, secrets, configmaps)


def check_path(c, d, where, flag, value, raw, mounts, secrets, configmaps):
    best = None
    for path, m, vol in mounts:
        if value == path or value.startswith(path.rstrip("/") + "/"):
            if best is None or len(path) > len(best[0]):
                best = (path, m, vol)
    if best is None:
        c.fail(d.where(raw), f"{where}: {flag} {value} is in no mounted volume")
        return
    path, m, vol = best
    rel = value[len(path):].lstrip("/")
    if flag == "--store" and m.get("readOnly"):
        c.fail(d.where(raw), f"{where}: --store {value} is on a read-only mount")
    for kind, objects, key in (("secret", secrets, "secretName"), ("configMap", configmaps, "name")):
        if kind in vol:
            obj_name = vol[kind].get(key)
            items = vol[kind].get("items")
            files = {it.get("path") for it in items} if items else set(objects.get(obj_name, ()))
            if rel not in files:
                c.fail(d.where(raw), f"{where}: {flag} {value}: {kind} volume {obj_name} holds no file {rel!r} (has {sorted(files)})")


# ------------------------------------------------------------------ overlays

def json_pointer(obj, pointer):
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
    parent = None
    for p in parts:
        parent = obj
        if isinstance(obj, list) and p.isdigit() and int(p) < len(obj):
            obj = obj[int(p)]
        elif isinstance(obj, dict) and p in obj:
            obj = obj[p]
        else:
            return None, None, None
    return parent, parts[-1] if parts else None, obj


def apply_overlay(c, kpath, rel, base_docs):
    """Applies a kustomization's JSON6902 patches to copies of base_docs; reports bad ones."""
    k = yaml.safe_load(open(kpath, encoding="utf-8"))
    docs = copy.deepcopy(base_docs)
    for patch in k.get("patches", []) or []:
        target = patch.get("target", {}) or {}
        hits = [d for d in docs if d.obj.get("kind") == target.get("kind") and d.obj["metadata"]["name"] == target.get("name")]
        if not hits:
            c.fail(rel, f"patch target {target} matches no manifest of the base")
            continue
        ops = yaml.safe_load(patch.get("patch", "")) or []
        for d in hits:
            for op in ops:
                parent, last, node = json_pointer(d.obj, op.get("path", ""))
                if op.get("op") in ("remove", "replace") and node is None:
                    c.fail(rel, f"patch {op.get('op')} {op.get('path')}: no such path in {target.get('kind')} {target.get('name')}")
                    continue
                if op.get("op") == "remove":
                    if isinstance(parent, list):
                        parent.pop(int(last))
                    else:
                        del parent[last]
                elif op.get("op") == "replace":
                    parent[int(last) if isinstance(parent, list) else last] = op.get("value")
    return docs


# ------------------------------------------------------------------ container file

def check_containerfile(c, rel, text, ctx, manifest_ports, cuda=False):
    ins = dockerfile_instructions(text)
    froms = [(n, rest) for n, w, rest in ins if w == "FROM"]
    if len(froms) < 2:
        c.fail(rel, "expected a multi-stage build (a build stage and a runtime stage)")
    elif not cuda:
        if not froms[0][1].startswith("debian:bookworm "):
            c.fail(f"{rel}:{froms[0][0]}", f"build stage should be FROM debian:bookworm, is {froms[0][1]}")
        if froms[-1][1].split()[0] != "debian:bookworm-slim":
            c.fail(f"{rel}:{froms[-1][0]}", f"runtime stage should be FROM debian:bookworm-slim, is {froms[-1][1]}")
    runs = " ".join(rest for _, w, rest in ins if w == "RUN")
    if "scripts/setup.sh" not in runs:
        c.fail(rel, "the build stage must install its packages with scripts/setup.sh (the one list)")
    if ctx.get("binary_rel") and f"build/release/{ctx['binary_rel']}" not in runs + " ".join(r for _, w, r in ins if w == "COPY"):
        c.fail(rel, f"the binary is built at build/release/{ctx['binary_rel']}, which this file does not copy")
    last = froms[-1][0] if froms else 0
    final = [(n, w, r) for n, w, r in ins if n >= last]
    exposed = set()
    for n, w, r in final:
        if w == "EXPOSE":
            exposed |= {int(p.split("/")[0]) for p in r.split()}
    for port, where in sorted(manifest_ports.items()):
        if port not in exposed:
            c.fail(rel, f"container port {port} ({where}) is not EXPOSEd (EXPOSE {sorted(exposed)})")
    users = [r for n, w, r in final if w == "USER"]
    uid = None
    if not users or not users[-1].split(":")[0].isdigit():
        c.fail(rel, "the runtime stage needs a numeric USER (runAsNonRoot can verify only a number)")
    else:
        uid = int(users[-1].split(":")[0])
        if uid == 0:
            c.fail(rel, "USER must not be root")
    entry = [r for n, w, r in final if w == "ENTRYPOINT"]
    if not entry or json.loads(entry[-1]) != ["mesa"]:
        c.fail(rel, 'ENTRYPOINT must be ["mesa"] (the manifests pass only args)')
    cmd = [r for n, w, r in final if w == "CMD"]
    tokens = json.loads(entry[-1]) if entry else []
    tokens += json.loads(cmd[-1]) if cmd else []
    for flag in FLAG.findall(" ".join(tokens)):
        if ctx.get("help") and flag not in ctx["help"].get("", set()):
            c.fail(rel, f"CMD passes {flag}, which `mesa --help` does not list")
    paths = set()
    for n, w, r in final:
        if w in ("WORKDIR", "VOLUME"):
            paths |= set(re.findall(r"/[\w./-]+", r))
        if w == "RUN":
            for m in re.finditer(r"mkdir\s+(?:-p\s+)?((?:/[\w./-]+\s*)+)", r):
                paths |= set(m.group(1).split())
    return uid, paths, exposed


def ldd_packages(c, binary):
    """{package: [library files]} for the libraries `ldd BINARY` loads."""
    try:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        c.fail(binary, f"ldd failed: {e}")
        return {}
    files = []
    for line in out.splitlines():
        line = line.strip()
        if "not found" in line:
            c.fail(binary, f"ldd: {line} (the binary cannot run here either)")
        m = re.match(r"\S+ => (/\S+)", line) or re.match(r"(/\S+) \(0x", line)
        if m:
            files.append(m.group(1))
    if not shutil.which("dpkg"):
        c.fail(binary, "dpkg is missing: cannot map the libraries to Debian packages")
        return {}

    def query(paths):
        r = subprocess.run(["dpkg", "-S"] + paths, capture_output=True, text=True)
        owner = {}
        for line in r.stdout.splitlines():
            if line.startswith("diversion") or ": " not in line:
                continue
            pkgs, path = line.rsplit(": ", 1)
            owner[path] = [p.strip().split(":")[0] for p in pkgs.split(",")]
        return owner

    owner = query(files)
    result = {}
    for f in files:
        cands = [f, os.path.realpath(f)]
        cands += [x[4:] if x.startswith("/usr/") else "/usr" + x for x in list(cands)]
        pk = next((owner[x] for x in cands if x in owner), None)
        if pk is None:
            more = query([x for x in cands if os.path.exists(x) or x != f])
            pk = next((more[x] for x in cands if x in more), None)
        if pk is None:
            c.fail(binary, f"{f} belongs to no Debian package: the image cannot install it (copy it or link it statically)")
            continue
        result.setdefault(pk[0], []).append(os.path.basename(f))
    return result


def check_runtime_packages(c, rel, text, needed):
    listed = runtime_packages(text)
    if listed is None:
        c.fail(rel, 'no ARG MESA_RUNTIME_PACKAGES="..." list in the runtime stage')
        return
    for pkg, libs in sorted(needed.items()):
        if pkg not in listed:
            c.fail(rel, f"MESA_RUNTIME_PACKAGES lacks {pkg} (the binary loads {', '.join(sorted(libs))})")
    return sorted(listed - set(needed))


# ------------------------------------------------------------------ driver

def help_flags(mesa):
    out = {}
    for sub in ("", "coordinator", "worker"):
        cmd = [mesa] + ([sub] if sub else []) + ["--help"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            return None, f"{' '.join(cmd)} exited {r.returncode}: {r.stderr.strip()[:200]}"
        out[sub] = set(FLAG.findall(r.stdout))
    return out, None


def readme_image(path):
    text = open(path, encoding="utf-8").read()
    m = re.search(r"build -f deploy/container/Containerfile -t (\S+) \.", text)
    return m.group(1) if m else None


def run_checks(inputs, ctx):
    """All checks over in-memory inputs; returns (errors, notes)."""
    c = Checker()
    notes = []
    uid, image_paths, _ = check_containerfile(c, inputs["cf_rel"], inputs["cf_text"], ctx, inputs["ports"])
    ctx = dict(ctx, uid=uid, image_paths=image_paths)
    check_containerfile(c, inputs["cuda_rel"], inputs["cuda_text"], dict(ctx, binary_rel=None), inputs["ports"], cuda=True)
    if "MESA_WITH_CUDA=ON" not in inputs["cuda_text"] or "MESA_CUDA_PLUGIN" not in inputs["cuda_text"]:
        c.fail(inputs["cuda_rel"], "the CUDA variant must configure -DMESA_WITH_CUDA=ON and set MESA_CUDA_PLUGIN")
    needed = {k: v for k, v in inputs["needed"].items() if not SANITIZER_PKG.match(k)}
    if len(needed) != len(inputs["needed"]):
        notes.append("sanitizer runtime packages ignored (this is a sanitizer build; the image uses the release preset)")
    extra = check_runtime_packages(c, inputs["cf_rel"], inputs["cf_text"], needed)
    if extra:
        notes.append(f"runtime packages listed but not loaded by the binary (harmless): {extra}")
    check_manifests(c, inputs["docs"], inputs["templates"], ctx)
    for rel, docs in inputs["overlays"]:
        o = Checker()
        check_manifests(o, docs, inputs["templates"], ctx)
        c.errors += [f"{e} (after the patches of {rel})" for e in o.errors if e not in c.errors]
    return c.errors, notes


def load_inputs(src, k8s_rel="deploy/k8s"):
    c = Checker()
    base = os.path.join(src, k8s_rel, "base")
    kust = yaml.safe_load(open(os.path.join(base, "kustomization.yaml"), encoding="utf-8"))
    listed = kust.get("resources", []) or []
    docs, templates = [], []
    for f in sorted(os.listdir(base)):
        if not f.endswith((".yaml", ".yml")) or f == "kustomization.yaml":
            continue
        rel = f"{k8s_rel}/base/{f}"
        loaded = load_docs(os.path.join(base, f), rel, c)
        if f in listed:
            docs += loaded
        elif all(d.obj.get("kind") == "Secret" for d in loaded):
            templates += loaded  # a template of a Secret created by hand
        else:
            c.fail(rel, "not listed in kustomization.yaml resources")
    for f in listed:
        if not os.path.exists(os.path.join(base, f)):
            c.fail(f"{k8s_rel}/base/kustomization.yaml", f"lists {f}, which does not exist")
    overlays = []
    k8s = os.path.join(src, k8s_rel)
    for o in sorted(os.listdir(k8s)):
        kp = os.path.join(k8s, o, "kustomization.yaml")
        if o == "base" or not os.path.exists(kp):
            continue
        res = yaml.safe_load(open(kp, encoding="utf-8")).get("resources", [])
        if res != ["../base"]:
            c.fail(f"{k8s_rel}/{o}/kustomization.yaml", f"an overlay should build on ../base (resources: {res})")
        overlays.append((f"{k8s_rel}/{o}", apply_overlay(c, kp, f"{k8s_rel}/{o}/kustomization.yaml", docs)))
    ports = {}
    for d in docs:
        if d.obj.get("kind") in WORKLOADS:
            for cp in container_ports(d):
                ports.setdefault(cp.get("containerPort"), d.where(f"containerPort: {cp.get('containerPort')}"))
    return c, dict(docs=docs, templates=templates, overlays=overlays, ports=ports)


def kubectl_render(src, notes):
    kubectl = shutil.which("kubectl")
    if not kubectl:
        notes.append("kubectl kustomize: skipped (no kubectl on PATH; our own overlay check ran)")
        return []
    try:
        v = json.loads(subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True,
                                      text=True, timeout=60).stdout)
        minor = int(re.match(r"\d+", v["clientVersion"]["minor"]).group(0))
    except Exception as e:  # an odd kubectl: say so, do not fail on it
        notes.append(f"kubectl kustomize: skipped (cannot read kubectl's version: {e})")
        return []
    if minor < 24:
        notes.append(f"kubectl kustomize: skipped (kubectl 1.{minor} < 1.24: too old for these kustomizations)")
        return []
    errors = []
    for o in ("base", "cpu"):
        path = os.path.join(src, "deploy/k8s", o)
        r = subprocess.run([kubectl, "kustomize", path], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            errors.append(f"deploy/k8s/{o}: kubectl kustomize failed: {r.stderr.strip()[:400]}")
        else:
            n = sum(1 for d in yaml.safe_load_all(r.stdout) if d)
            notes.append(f"kubectl kustomize deploy/k8s/{o}: rendered {n} objects (kubectl 1.{minor}, offline)")
    return errors


def self_test(inputs, ctx):
    """Each broken copy of the inputs must be reported with the expected message."""
    def doc(kind, name):
        return next(d for d in inputs["docs"] if d.obj["kind"] == kind and d.obj["metadata"]["name"] == name)

    def container(inp, name):
        return next(d for d in inp["docs"] if d.obj["metadata"]["name"] == name and d.obj["kind"] in WORKLOADS) \
            .obj["spec"]["template"]["spec"]["containers"][0]

    doc("Deployment", "mesa-coordinator"), doc("Deployment", "mesa-worker")  # the cases below need both
    cases = []

    def case(label, expect, mutate, ctx_change=None):
        cases.append((label, expect, mutate, ctx_change))

    case("probe port undeclared", "is not a declared container port",
         lambda i: container(i, "mesa-coordinator").__setitem__("ports", container(i, "mesa-coordinator")["ports"][:1]))
    case("ConfigMap key misspelt", "has no key 'MESA_NOPE'",
         lambda i: container(i, "mesa-worker")["env"][3]["valueFrom"]["configMapKeyRef"].__setitem__("key", "MESA_NOPE"))
    case("unknown flag", "has no flag --no-such-flag",
         lambda i: container(i, "mesa-worker")["args"].append("--no-such-flag=1"))
    case("package dropped", "lacks libsqlite3-0",
         lambda i: i.__setitem__("cf_text", i["cf_text"].replace("libsqlite3-0 ", "")))
    case("port not exposed", "is not EXPOSEd",
         lambda i: i.__setitem__("cf_text", i["cf_text"].replace(" 9091\n", "\n")))
    case("volume missing", "names no volume",
         lambda i: container(i, "mesa-worker")["volumeMounts"][0].__setitem__("name", "nope"))
    case("wrong image", "is not the image",
         lambda i: container(i, "mesa-worker").__setitem__("image", "mesa:other"))
    case("two writers", "needs replicas: 1",
         lambda i: next(d for d in i["docs"] if d.obj["metadata"]["name"] == "mesa-coordinator").obj["spec"].__setitem__("replicas", 2))
    case("coordinator Service misspelt", "no Service named",
         lambda i: container(i, "mesa-worker")["args"].__setitem__(1, "--coordinator=mesa-coord:50051"))
    case("undefined variable", "not in the container's env",
         lambda i: container(i, "mesa-worker")["args"].append("--name=$(NOPE)"))
    case("Secret file missing", "holds no file",
         lambda i: container(i, "mesa-worker")["args"].append("--auth-token-file=/etc/mesa/tls/token"))
    case("selector mismatch", "selects no pod template",
         lambda i: next(d for d in i["docs"] if d.obj["kind"] == "Service").obj["spec"]["selector"].__setitem__("app.kubernetes.io/component", "x"))
    case("flag missing from the binary", "has no flag --listen",
         lambda i: None, lambda cx: dict(cx, help={k: v - {"--listen"} for k, v in cx["help"].items()}))
    case("root user", "USER must not be root",
         lambda i: i.__setitem__("cf_text", i["cf_text"].replace("USER 10001:10001", "USER 0")))
    bad = []
    for label, expect, mutate, ctx_change in cases:
        inp = copy.deepcopy(inputs)
        mutate(inp)
        cx = ctx_change(ctx) if ctx_change else ctx
        errors, _ = run_checks(inp, cx)
        if not any(expect in e for e in errors):
            bad.append(f"self-test '{label}': expected an error containing {expect!r}, got {errors[:3]}")
    return len(cases), bad


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mesa", required=True, help="the built mesa binary ($<TARGET_FILE:mesa>)")
    ap.add_argument("--build-dir", required=True, help="the CMake build tree the binary is in")
    ap.add_argument("--source", required=True, help="the repository root")
    a = ap.parse_args()
    src = os.path.abspath(a.source)
    mesa = os.path.abspath(a.mesa)
    notes = ["validation: our own schema and cross-reference checks (python3-yaml); "
             "`kubectl apply --dry-run=client` is not used: it needs an API server"]
    errors = []
    help_, err = help_flags(mesa)
    if err:
        print(f"FAIL: {err}")
        return 1
    ctx = {"help": help_, "require_probes": True,
           "binary_rel": os.path.relpath(mesa, os.path.abspath(a.build_dir)),
           "image": readme_image(os.path.join(src, "deploy/container/README.md"))}
    if not ctx["image"]:
        errors.append("deploy/container/README.md: no `docker build -f deploy/container/Containerfile -t IMAGE .` line")
    loader, inputs = load_inputs(src)
    errors += loader.errors
    c = Checker()
    inputs.update(cf_rel="deploy/container/Containerfile",
                  cf_text=open(os.path.join(src, "deploy/container/Containerfile"), encoding="utf-8").read(),
                  cuda_rel="deploy/container/Containerfile.cuda",
                  cuda_text=open(os.path.join(src, "deploy/container/Containerfile.cuda"), encoding="utf-8").read(),
                  needed=ldd_packages(c, mesa))
    errors += c.errors
    e, n = run_checks(inputs, ctx)
    errors += e
    notes += n
    notes.append(f"runtime packages of {os.path.relpath(mesa, src) if mesa.startswith(src) else mesa} (ldd + dpkg -S): "
                 f"{sorted(inputs['needed'])}")
    errors += kubectl_render(src, notes)
    ncases, bad = self_test(inputs, ctx)
    errors += bad
    notes.append(f"self-test: {ncases - len(bad)}/{ncases} broken copies reported")
    for line in notes:
        print(f"note: {line}")
    print(f"checked: {len(inputs['docs'])} manifests, {len(inputs['overlays'])} overlay(s), 2 container files, "
          f"flags of `mesa coordinator/worker --help`")
    for line in errors:
        print(f"FAIL: {line}")
    print("deploy: OK" if not errors else f"deploy: {len(errors)} problem(s)")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
