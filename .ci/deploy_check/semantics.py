"""tokenrelay-specific rules for every pod template (and metrics Service) in the given manifests."""
import base64
import os
import posixpath
import re
import subprocess
import sys
import tempfile
import tomllib
from urllib.parse import urlsplit

import yaml

binary, files = sys.argv[1], sys.argv[2:]
problems = []
pods = 0
configs = 0
checked_by_binary = 0
monitors = 0
policies = 0

# Variables that make an Azure SDK sign in by itself instead of asking tokenrelay
# (docs/protocols.md#variables-that-bypass-the-sidecar), or select another managed-identity
# flavour.
FORBIDDEN_IN_APPS = {
    "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_AUTHORITY_HOST", "MSI_ENDPOINT", "MSI_SECRET",
}
# What each kubelet probe of tokenrelay must ask, on the admin listener.
PROBE_PATHS = {"startupProbe": "/readyz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
# Content of every mounted Secret file in `tokenrelay check` runs: 32 random-looking bytes in
# base64, which is a valid cache key, identity header and client secret alike.
SECRET_FILE_CONTENT = base64.b64encode(bytes(range(7, 39))).decode()
# What a mounted CA certificate Secret stands in as (tokenrelay check looks for the PEM marker).
PEM_STAND_IN = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def pod_templates(doc):
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind == "Pod":
        yield doc
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        yield spec.get("template") or {}
    elif kind == "CronJob":
        yield ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}


def service_link_env(docs):
    """The variables the kubelet would give every container if a pod left enableServiceLinks on
    (pkg/kubelet/envvars in Kubernetes: FromServices and makeLinkVariables): for each Service
    with a cluster IP, <NAME>_SERVICE_HOST, _SERVICE_PORT, _SERVICE_PORT_<PORT NAME> per named
    port, the Docker-link _PORT (first port) and _PORT_<port>_<PROTOCOL> with _PROTO, _PORT and
    _ADDR, where <NAME> is the Service name upper-cased with '-' and '.' as '_'. For every
    Service in the same manifests, and for Services named tokenrelay, tokenrelay-metrics and
    tokenrelay-app, whose variables start with TOKENRELAY_. `tokenrelay check` must accept them
    all, so a pod that forgets enableServiceLinks: false still starts."""
    services = [((d.get("metadata") or {}).get("name"), (d.get("spec") or {}).get("ports") or [])
                for d in docs if d.get("kind") == "Service" and (d.get("spec") or {}).get("clusterIP") != "None"]
    services += [("tokenrelay", [{"name": "http", "port": 8080}, {"name": "relay-admin", "port": 8081}]),
                 ("tokenrelay-metrics", [{"port": 8081}]),
                 ("tokenrelay-app", [{"name": "web", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}])]
    env = {}
    for number, (name, ports) in enumerate(services, 1):
        if not name or not ports:
            continue
        ip = f"10.0.{number // 250}.{number % 250}"
        prefix = re.sub(r"[-.]", "_", name.upper())
        prefix = "_" + prefix if prefix[0].isdigit() else prefix
        env[f"{prefix}_SERVICE_HOST"] = ip
        env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
        for p in ports:
            if p.get("name"):
                env[f"{prefix}_SERVICE_PORT_{p['name'].upper().replace('-', '_')}"] = str(p["port"])
        env[f"{prefix}_PORT"] = f"{(ports[0].get('protocol') or 'TCP').lower()}://{ip}:{ports[0]['port']}"
        for p in ports:
            protocol = p.get("protocol") or "TCP"
            port_prefix = f"{prefix}_PORT_{p['port']}_{protocol.upper()}"
            env[port_prefix] = f"{protocol.lower()}://{ip}:{p['port']}"
            env[port_prefix + "_PROTO"] = protocol.lower()
            env[port_prefix + "_PORT"] = str(p["port"])
            env[port_prefix + "_ADDR"] = ip
    return env


def env_of(container):
    return {e["name"]: e for e in container.get("env") or []}


def value_of(env, name, default=None):
    entry = env.get(name)
    return entry.get("value", default) if entry else default


def split_addr(addr):
    host, _, port = addr.rpartition(":")
    return host, port


def under(path, directory):
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def check_pod(where, template, configmaps, secrets, links):
    global pods
    meta = template.get("metadata") or {}
    spec = template.get("spec") or {}
    if spec.get("enableServiceLinks") is not False:
        problems.append(f"{where}: the pod spec must set enableServiceLinks: false (the kubelet would give every "
                        "container variables named after the namespace's Services, TOKENRELAY_* for tokenrelay-*)")
    inits = spec.get("initContainers") or []
    containers = spec.get("containers") or []
    relay = [c for c in inits if c.get("name") == "tokenrelay"]
    if not relay:
        return
    pods += 1
    relay = relay[0]
    say = lambda msg: problems.append(f"{where}: {msg}")

    if relay.get("restartPolicy") != "Always":
        say("tokenrelay must be a native sidecar (initContainers entry with restartPolicy: Always)")
    env = env_of(relay)
    host, port = split_addr(value_of(env, "TOKENRELAY_SERVER__LISTEN", "127.0.0.1:8080"))
    if host not in ("127.0.0.1", "[::1]", "localhost"):
        say(f"tokenrelay listens on {host}:{port}: only loopback keeps tokens inside the pod")
    if "TOKENRELAY_SERVER__IDENTITY_HEADER_FILE" not in env:
        say("tokenrelay has no TOKENRELAY_SERVER__IDENTITY_HEADER_FILE (the App Service endpoint needs it)")

    # Probes: the kubelet connects to the pod IP, which only the admin listener answers; the
    # main listener is loopback only. So every probe is an httpGet on the admin port.
    admin = value_of(env, "TOKENRELAY_SERVER__ADMIN_LISTEN")
    admin_port = split_addr(admin)[1] if admin else None
    if not admin:
        say("tokenrelay has no TOKENRELAY_SERVER__ADMIN_LISTEN: kubelet probes cannot reach the loopback listener")
    elif admin_port == port:
        say(f"tokenrelay's admin listener {admin} uses the token port {port}")
    elif split_addr(admin)[0] in ("127.0.0.1", "[::1]", "localhost"):
        say(f"tokenrelay's admin listener {admin} is loopback: kubelet probes connect to the pod IP")
    named_ports = {p["name"]: str(p["containerPort"]) for p in relay.get("ports") or [] if p.get("name")}
    for p in relay.get("ports") or []:
        if str(p.get("containerPort")) == port:
            say(f"tokenrelay declares containerPort {port}, its loopback token port (unreachable on the pod IP)")
    for probe, want_path in PROBE_PATHS.items():
        spec_ = relay.get(probe)
        if not spec_:
            say(f"tokenrelay has no {probe} (httpGet {want_path} on the admin port)")
            continue
        get = spec_.get("httpGet")
        if not get:
            say(f"tokenrelay {probe} must be httpGet {want_path} on the admin port (the image has no shell for exec)")
            continue
        target = named_ports.get(str(get.get("port")), str(get.get("port")))
        if target == port:
            say(f"tokenrelay {probe} targets the loopback token port {port}: kubelet connects to the pod IP")
        elif admin and target != admin_port:
            say(f"tokenrelay {probe} targets port {get.get('port')}, not the admin listener {admin}")
        if get.get("path") != want_path:
            say(f"tokenrelay {probe} asks {get.get('path')}, expected {want_path}")
        if get.get("host"):
            say(f"tokenrelay {probe} sets httpGet.host: it must probe this pod")
    for c in inits + containers:
        if c is not relay and c.get("name") == "tokenrelay-wait":
            say("tokenrelay-wait is obsolete: the startupProbe on the admin port orders the start-up")

    sc = relay.get("securityContext") or {}
    for key, want in (("runAsNonRoot", True), ("readOnlyRootFilesystem", True),
                      ("allowPrivilegeEscalation", False)):
        if sc.get(key) is not want:
            say(f"tokenrelay securityContext.{key} should be {want}")
    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
        say("tokenrelay securityContext.capabilities.drop should contain ALL")

    # Workload identity: the webhook must mutate tokenrelay and nothing else. Pods without the
    # label (the client-secret variant) get nothing injected at all.
    labels = meta.get("labels") or {}
    workload_identity = labels.get("azure.workload.identity/use") == "true"
    annotation = (meta.get("annotations") or {}).get("azure.workload.identity/skip-containers", "")
    skipped = {name.strip() for name in annotation.split(";") if name.strip()}
    if workload_identity:
        for c in inits + containers:
            if c is not relay and c["name"] not in skipped:
                say(f"container {c['name']} is not in azure.workload.identity/skip-containers: the webhook "
                    "would give it AZURE_* variables and the projected token")
        if "tokenrelay" in skipped:
            say("tokenrelay is in skip-containers: it would get no workload identity")
    elif "TOKENRELAY_CONFIG" not in env:
        say('no azure.workload.identity/use: "true" label and no TOKENRELAY_CONFIG: tokenrelay has no identity')

    # A changed identity header must restart the app and tokenrelay together: when the header
    # Secret is rendered with the pod (chart-generated), the pod carries its checksum.
    volumes_ = {v["name"]: v for v in spec.get("volumes") or []}
    header = ((volumes_.get("tokenrelay-identity-header") or {}).get("secret") or {}).get("secretName")
    if header in secrets and "checksum/identity-header" not in (meta.get("annotations") or {}):
        say(f"the identity header Secret {header} is rendered here, but the pod has no checksum/identity-header "
            "annotation: a changed header would not roll the pods")

    for c in [c for c in inits + containers if c is not relay]:
        cenv = env_of(c)
        for name in sorted(FORBIDDEN_IN_APPS & cenv.keys()):
            say(f"container {c['name']} sets {name}: Azure SDKs would bypass tokenrelay")
        if "IDENTITY_ENDPOINT" in cenv:
            if "IDENTITY_HEADER" not in cenv:
                say(f"container {c['name']} sets IDENTITY_ENDPOINT without IDENTITY_HEADER")
            url = urlsplit(cenv["IDENTITY_ENDPOINT"].get("value", ""))
            if url.hostname != "127.0.0.1" or str(url.port) != port:
                say(f"container {c['name']}: IDENTITY_ENDPOINT {url.geturl()} is not tokenrelay at 127.0.0.1:{port}")

    # tokenrelay's volumes (client secret, cache key, cache file, configuration) stay its own.
    relay_volumes = {m["name"] for m in relay.get("volumeMounts") or []}
    for c in [c for c in inits + containers if c is not relay]:
        for m in c.get("volumeMounts") or []:
            if m["name"] in relay_volumes:
                say(f"container {c['name']} mounts {m['name']}, a volume of tokenrelay")

    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    mounts = [(m["mountPath"], m, volumes.get(m["name"]) or {}) for m in relay.get("volumeMounts") or []]
    if value_of(env, "TOKENRELAY_CACHE__PERSISTENCE__ENABLED", "false") == "true":
        check_persistence(say, env, mounts)
    if binary:
        check_with_binary(where, env, mounts, configmaps, workload_identity, links)


def mount_of(path, mounts):
    """The deepest mount holding path, as (mountPath, mount, volume), or None."""
    found = [m for m in mounts if under(path, m[0])]
    return max(found, key=lambda m: len(m[0])) if found else None


def check_persistence(say, env, mounts):
    path = value_of(env, "TOKENRELAY_CACHE__PERSISTENCE__PATH")
    key_file = value_of(env, "TOKENRELAY_CACHE__PERSISTENCE__KEY_FILE")
    if value_of(env, "TOKENRELAY_CACHE__PERSISTENCE__ALLOW_UNENCRYPTED_STORAGE") == "true":
        say("the persistent cache allows unencrypted storage: mount a key Secret and set KEY_FILE instead")
    if not path:
        say("TOKENRELAY_CACHE__PERSISTENCE__PATH is not set (the default is under $HOME, the read-only root)")
    else:
        found = mount_of(path, mounts)
        if not found or not ("emptyDir" in found[2] or "persistentVolumeClaim" in found[2]):
            say(f"the persistent cache {path} is not on an emptyDir or PVC mount (the root is read-only)")
        elif found[1].get("readOnly"):
            say(f"the persistent cache {path} is on a read-only mount")
        elif posixpath.dirname(path) == found[0].rstrip("/"):
            say(f"the persistent cache {path} sits in the mount's root, which is world-writable: "
                "use a subdirectory, which tokenrelay creates 0700")
    if not key_file:
        say("the persistent cache has no TOKENRELAY_CACHE__PERSISTENCE__KEY_FILE (key from a Secret)")
    else:
        found = mount_of(key_file, mounts)
        if not found or "secret" not in found[2]:
            say(f"the cache key {key_file} is not on a Secret mount")


def check_with_binary(where, env, mounts, configmaps, workload_identity, links):
    """`tokenrelay check` with the container's own environment, its ConfigMap, stand-ins for its
    Secrets (every mounted path moved under a scratch directory) and the service-link variables
    of `links` (which the container's own variables override, as with the kubelet)."""
    global checked_by_binary
    checked_by_binary += 1
    with tempfile.TemporaryDirectory() as root:
        def remap(text):
            for mount_path, _, _ in sorted(mounts, key=lambda m: -len(m[0])):
                text = re.sub(r"(?<![\w/.])" + re.escape(mount_path.rstrip("/")) + r"(?=/|\b|$)",
                              root + mount_path.rstrip("/"), text)
            return text

        referenced = " ".join(e.get("value", "") for e in env.values())
        for mount_path, _, volume in mounts:
            local = root + mount_path
            os.makedirs(local, exist_ok=True)
            if "configMap" in volume:
                name = volume["configMap"].get("name")
                data = configmaps.get(name)
                if data is None:
                    problems.append(f"{where}: ConfigMap {name} (mounted at {mount_path}) is not in the same manifests")
                    continue
                items = volume["configMap"].get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    text = remap(data.get(item["key"], ""))
                    referenced += " " + text
                    os.makedirs(os.path.dirname(os.path.join(local, item["path"])), exist_ok=True)
                    with open(os.path.join(local, item["path"]), "w") as f:
                        f.write(text)
        for mount_path, _, volume in mounts:
            local = root + mount_path
            if "secret" in volume:
                items = volume["secret"].get("items")
                paths = [item["path"] for item in items] if items else [
                    p[len(local) + 1:] for p in re.findall(re.escape(local) + r"/[\w./-]+", remap(referenced))]
                for p in paths:
                    os.makedirs(os.path.dirname(os.path.join(local, p)), exist_ok=True)
                    with open(os.path.join(local, p), "w") as f:
                        # A CA bundle (cache.shared.ca_file) must at least look like PEM.
                        f.write(PEM_STAND_IN if p.endswith((".crt", ".pem")) else SECRET_FILE_CONTENT)
        run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        run_env.update(links)
        if workload_identity:
            # What the workload identity webhook injects into the tokenrelay container.
            token = os.path.join(root, "azure-identity-token")
            with open(token, "w") as f:
                f.write("a.b.c")
            run_env.update({
                "AZURE_CLIENT_ID": "00000000-0000-0000-0000-000000000001",
                "AZURE_TENANT_ID": "00000000-0000-0000-0000-000000000002",
                "AZURE_FEDERATED_TOKEN_FILE": token,
                "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.com/",
            })
        for name, entry in env.items():
            if "value" in entry:
                run_env[name] = remap(str(entry["value"]))
        run = subprocess.run([binary, "check"], env=run_env, capture_output=True, text=True)
        if run.returncode != 0:
            problems.append(f"{where}: `tokenrelay check` with this container's environment refuses it: "
                            f"{run.stderr.strip().replace(root, '')}")
        elif "# ignored, not configuration" not in run.stdout:
            problems.append(f"{where}: `tokenrelay check` does not list the service-link variables it ignores")


def check_config(where, text):
    global configs
    configs += 1
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        problems.append(f"{where}: config.toml is not valid TOML: {error}")


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_metrics(where_file, docs):
    """A ServiceMonitor must find a Service on relay-admin, and that Service tokenrelay pods."""
    global monitors
    services = [d for d in docs if d.get("kind") == "Service"]
    templates = [t for d in docs for t in pod_templates(d)]
    for monitor in [d for d in docs if d.get("kind") == "ServiceMonitor"]:
        monitors += 1
        say = lambda msg: problems.append(f"{where_file}: ServiceMonitor/{monitor['metadata']['name']}: {msg}")
        spec = monitor.get("spec") or {}
        matched = [s for s in services
                   if selects((spec.get("selector") or {}).get("matchLabels"), s["metadata"].get("labels") or {})]
        if not matched:
            say("selects no Service in the same manifests")
        for service in matched:
            names = {p.get("name") for p in service["spec"].get("ports") or []}
            for endpoint in spec.get("endpoints") or []:
                if endpoint.get("port") not in names:
                    say(f"endpoint port {endpoint.get('port')} is not a port of Service {service['metadata']['name']}")
                if endpoint.get("path", "/metrics") != "/metrics":
                    say(f"endpoint path {endpoint.get('path')} is not /metrics")
            pods_ = [t for t in templates if selects(service["spec"].get("selector"), (t.get("metadata") or {}).get("labels") or {})]
            if templates and not pods_:
                say(f"Service {service['metadata']['name']} selects none of the pod templates")
            for t in pods_:
                relay = [c for c in (t.get("spec") or {}).get("initContainers") or [] if c.get("name") == "tokenrelay"]
                port_names = {p.get("name") for c in relay for p in c.get("ports") or []}
                for p in service["spec"].get("ports") or []:
                    if str(p.get("targetPort")) not in port_names:
                        say(f"Service {service['metadata']['name']} targetPort {p.get('targetPort')} is not a port "
                            "of the tokenrelay container")


def has_sidecar(template):
    """Whether the pod template runs tokenrelay as a native sidecar."""
    return any(c.get("name") == "tokenrelay" for c in (template.get("spec") or {}).get("initContainers") or [])


def admin_port_of(template):
    """The admin listener's port of the pod's tokenrelay sidecar, or None."""
    for c in (template.get("spec") or {}).get("initContainers") or []:
        if c.get("name") == "tokenrelay":
            admin = value_of(env_of(c), "TOKENRELAY_SERVER__ADMIN_LISTEN")
            return int(split_addr(admin)[1]) if admin else None
    return None


def check_network_policies(where_file, docs):
    """A NetworkPolicy must select pods carrying the sidecar, and open their admin port only to
    named peers: a rule without `from` (everyone) may cover other ports, never the admin port."""
    global policies
    templates = [t for d in docs for t in pod_templates(d)]
    for policy in [d for d in docs if d.get("kind") == "NetworkPolicy"]:
        policies += 1
        say = lambda msg: problems.append(f"{where_file}: NetworkPolicy/{policy['metadata']['name']}: {msg}")
        spec = policy.get("spec") or {}
        if "Ingress" not in (spec.get("policyTypes") or []):
            say("policyTypes lacks Ingress")
        selector = (spec.get("podSelector") or {}).get("matchLabels")
        selected = [t for t in templates if selects(selector, (t.get("metadata") or {}).get("labels") or {})]
        admin_ports = {p for p in map(admin_port_of, selected) if p}
        if templates and not selected:
            say("selects no pod template with a tokenrelay sidecar")
        elif selected and not any(map(has_sidecar, selected)):
            # A policy of another workload in the same file (deploy/valkey.yaml's server for
            # the shared cache): the admin-port rules below are not about it.
            continue
        elif templates and not admin_ports:
            say("selects no pod template with a tokenrelay sidecar")
        for rule in spec.get("ingress") or []:
            peers = rule.get("from") or []
            for peer in peers:
                if peer.get("namespaceSelector") == {} and not peer.get("podSelector"):
                    say("a peer with an empty namespaceSelector admits every pod of the cluster")
                if (peer.get("ipBlock") or {}).get("cidr") in ("0.0.0.0/0", "::/0"):
                    say("a peer ipBlock admits every address")
            if peers:
                continue
            for admin in admin_ports:
                ports = rule.get("ports")
                if not ports:
                    say(f"an ingress rule without from and ports opens the admin port {admin} to everyone")
                for p in ports or []:
                    if (p.get("protocol") or "TCP") != "TCP":
                        continue
                    start = p.get("port")
                    start = 1 if start is None else (admin if start == "relay-admin" else start)
                    end = p.get("endPort", start)
                    if isinstance(start, int) and start <= admin <= end:
                        say(f"an ingress rule without from opens the admin port {admin} to everyone")


for path in files:
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    shown = f"rendered {os.path.basename(path)}" if "/rendered/" in path else os.path.relpath(path)
    from_helm = os.path.basename(path).startswith("helm-")
    configmaps = {(d.get("metadata") or {}).get("name"): d.get("data") or {} for d in docs if d.get("kind") == "ConfigMap"}
    secrets = {(d.get("metadata") or {}).get("name") for d in docs if d.get("kind") == "Secret"}
    links = service_link_env(docs)
    for doc in docs:
        where = f"{shown}: {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        for template in pod_templates(doc):
            check_pod(where, template, configmaps, secrets, links)
        if doc.get("kind") == "ConfigMap" and "config.toml" in (doc.get("data") or {}):
            check_config(where, doc["data"]["config.toml"])
        if doc.get("kind") == "ServiceAccount" and doc.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: set automountServiceAccountToken: false (tokenrelay never calls the API "
                            "server; the workload identity token is projected regardless)")
        if doc.get("kind") == "Job" and from_helm:
            annotations = (doc.get("metadata") or {}).get("annotations") or {}
            hooks = set(annotations.get("helm.sh/hook", "").split(","))
            policy = set(annotations.get("helm.sh/hook-delete-policy", "").split(","))
            if not {"post-install", "post-upgrade"} <= hooks or "before-hook-creation" not in policy:
                problems.append(f"{where}: a chart's Job must be a post-install,post-upgrade hook with the delete "
                                "policy before-hook-creation (its pod template is immutable: upgrading a release "
                                "Job whose pod changed fails)")
    check_metrics(shown, docs)
    check_network_policies(shown, docs)

print(f"checked {pods} pod templates with a tokenrelay sidecar, {configs} config.toml files, "
      f"{monitors} ServiceMonitors and {policies} NetworkPolicies"
      + (f"; `{binary} check` accepted {checked_by_binary} sidecar environments" if binary else
         " (no tokenrelay binary built: `tokenrelay check` skipped)"))
if pods == 0:
    problems.append("no pod template with a tokenrelay sidecar found")
for problem in problems:
    print("PROBLEM:", problem)
sys.exit(1 if problems else 0)
