"""The deployment files, checked offline (issue #25): no cluster and no Docker engine needed.

Kubernetes (deploy/k8s): renders `base` and every folder under `overlays` with `kubectl kustomize` (or a
standalone `kustomize build`), then
- validates every rendered object against the JSON schemas of Kubernetes KUBERNETES_VERSION in strict mode
  (an unknown field is an error), with the schemas the kubernetes-validate package bundles: no network;
- checks what a schema cannot: the API and worker Deployments exist with their roles, readiness on /ready,
  liveness on /health and a startup probe, probe and Service ports that name a container port, a termination
  grace longer than T2I_SHUTDOWN_GRACE, non-root pods with resources, GPUs where the device is CUDA; every
  secret variable comes from a secretKeyRef to the documented Secret, no Secret is rendered and no ConfigMap
  holds a credential; each Deployment's selector matches its pods; every Service, PodDisruptionBudget,
  ConfigMap and claim a pod or selector names exists, and every Deployment has a PodDisruptionBudget.

Compose (deploy/compose.scale.yml and deploy/docker-compose.yml): validates both against the Compose
specification's JSON schema (vendored by check-jsonschema), then checks the scaled file's structure:
several replicas of the service sharing Postgres and the SeaweedFS bucket (created by a one-shot step the
replicas wait for), health checks on /ready, secrets only as ${...} from the git-ignored deploy/.env,
replica-local data, Prometheus on prometheus.scale.yml (`promtool check config` when promtool is installed)
and Grafana on the committed provisioning.

Exits 1 listing every problem found.

Usage:
    python -m t2i_scripts.ops.deploy_check
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import yaml

from t2i_scripts.server import ROOT

KUBERNETES_VERSION = "1.31.0"
K8S = ROOT / "deploy" / "k8s"
COMPOSE_FILES = [ROOT / "deploy" / "compose.scale.yml", ROOT / "deploy" / "docker-compose.yml"]
SECRET_NAME = "t2i-align-secrets"
# The variables that hold credentials, and the Secret key each must come from (docs/scaling.md, "Deployment").
SECRET_ENV = {
    "T2I_DATABASE_URL": "database-url",
    "AWS_ACCESS_KEY_ID": "aws-access-key-id",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-access-key",
    "T2I_API_KEYS": "api-keys",
}
# Variables that must never appear as plain values (in a ConfigMap or an env entry).
CREDENTIAL_ENV = set(SECRET_ENV) | {"AWS_SESSION_TOKEN", "POSTGRES_PASSWORD"}
# user:password@ in a URL.
URL_CREDENTIALS = re.compile(r"://[^/@\s:]+:[^/@\s]+@")
ROLES = {"t2i-align-api": "api", "t2i-align-worker": "worker"}
KUBECTL_HELP = (
    "kubectl 1.21 or newer (with kustomize v4+) is needed: https://kubernetes.io/docs/tasks/tools/ "
    "(or the pkgs.k8s.io apt repository), or a standalone kustomize on PATH. Debian's kubernetes-client "
    "(kubectl 1.20) embeds kustomize v2.0.3, which cannot render the overlays."
)


# --- Kubernetes ---------------------------------------------------------------------------------------------


def kustomize_command() -> list[str]:
    """`kubectl kustomize` when kubectl embeds kustomize v4 or newer, else `kustomize build`."""
    if shutil.which("kubectl"):
        version = subprocess.run(["kubectl", "version", "--client"], capture_output=True, text=True).stdout
        found = re.search(r"Kustomize Version: v(\d+)", version)
        if found and int(found.group(1)) >= 4:
            return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    raise SystemExit(f"deploy-check: no usable kustomize. {KUBECTL_HELP}")


def render(command: list[str], folder: Path) -> list[dict]:
    result = subprocess.run([*command, str(folder)], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"deploy-check: `{' '.join(command)} {folder}` failed:\n{result.stderr.strip()}")
    return [item for item in yaml.safe_load_all(result.stdout) if item]


def validate_schemas(objects: list[dict], where: str) -> list[str]:
    problems = []
    for item in objects:
        name = f"{where}: {item.get('kind')}/{item.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(item, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            problems.append(f"{name}: {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            problems.append(f"{name}: {error.message}")
    return problems


def selects(selector: dict, labels: dict) -> bool:
    """A matchLabels selector (the only kind these manifests use) matches these labels."""
    wanted = selector.get("matchLabels", selector)
    return bool(wanted) and all(labels.get(key) == value for key, value in wanted.items())


def container_ports(container: dict) -> set:
    """The names and numbers a probe or a Service's targetPort may use for this container."""
    ports = container.get("ports", [])
    return {port.get("name") for port in ports} | {port["containerPort"] for port in ports}


def container_problems(name: str, pod: dict, config: dict[str, str], names: dict[str, set[str]]) -> list[str]:
    """One Deployment's pod template: probes, ports, grace, security, resources, its settings' sources."""
    problems = []
    containers = pod.get("containers", [])
    if len(containers) != 1:
        return [f"{name}: expected one container, found {len(containers)}"]
    container = containers[0]
    ports = container_ports(container)
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health"), ("startupProbe", None)):
        get = container.get(probe, {}).get("httpGet")
        if get is None:
            problems.append(f"{name}: no {probe} with httpGet")
            continue
        if path and get.get("path") != path:
            problems.append(f"{name}: {probe} checks {get.get('path')}, not {path}")
        if get.get("port") not in ports:
            problems.append(f"{name}: {probe} port {get.get('port')} is not a container port")
    env = {entry["name"]: entry for entry in container.get("env", [])}
    role = env.get("T2I_ROLES", {}).get("value")
    if role != ROLES.get(name):
        problems.append(f"{name}: T2I_ROLES is {role!r}, expected {ROLES.get(name)!r}")
    for variable, key in SECRET_ENV.items():
        ref = env.get(variable, {}).get("valueFrom", {}).get("secretKeyRef")
        if ref != {"name": SECRET_NAME, "key": key}:
            problems.append(f"{name}: {variable} must come from secretKeyRef {SECRET_NAME}/{key}, not {ref}")
    for variable in CREDENTIAL_ENV & env.keys():
        if "value" in env[variable]:
            problems.append(f"{name}: {variable} has a literal value")
    for source in container.get("envFrom", []):
        ref = (source.get("configMapRef") or source.get("secretRef") or {}).get("name")
        kind = "ConfigMap" if "configMapRef" in source else "Secret"
        if kind == "ConfigMap" and ref not in names["ConfigMap"]:
            problems.append(f"{name}: envFrom names ConfigMap {ref}, which is not rendered")
        if kind == "Secret" and ref != SECRET_NAME:
            problems.append(f"{name}: envFrom names Secret {ref}, not {SECRET_NAME}")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    shutdown = int(config.get("T2I_SHUTDOWN_GRACE", "30"))
    if grace <= shutdown:
        problems.append(f"{name}: terminationGracePeriodSeconds {grace} <= T2I_SHUTDOWN_GRACE {shutdown}")
    security = pod.get("securityContext", {}) | container.get("securityContext", {})
    if not security.get("runAsNonRoot") or security.get("runAsUser") == 0:
        problems.append(f"{name}: the pod must run as non-root (runAsNonRoot, a runAsUser other than 0)")
    if security.get("allowPrivilegeEscalation", True):
        problems.append(f"{name}: allowPrivilegeEscalation must be false")
    resources = container.get("resources", {})
    if not resources.get("requests", {}).get("memory") or not resources.get("limits", {}).get("memory"):
        problems.append(f"{name}: memory requests and limits are required")
    gpus = resources.get("limits", {}).get("nvidia.com/gpu")
    device = config.get("T2I_DEVICE", "")
    if device.startswith("cuda") and not gpus:
        problems.append(f"{name}: T2I_DEVICE={device} but no nvidia.com/gpu limit")
    if device == "cpu" and gpus:
        problems.append(f"{name}: T2I_DEVICE=cpu but it asks for nvidia.com/gpu {gpus}")
    mounts = {mount["name"] for mount in container.get("volumeMounts", [])}
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    if "/model" not in {mount["mountPath"] for mount in container.get("volumeMounts", [])}:
        problems.append(f"{name}: nothing is mounted at /model")
    for missing in mounts - volumes.keys():
        problems.append(f"{name}: volumeMount {missing} has no volume")
    for volume in volumes.values():
        claim = volume.get("persistentVolumeClaim", {}).get("claimName")
        if claim and claim not in names["PersistentVolumeClaim"]:
            problems.append(f"{name}: claim {claim} is not rendered")
    return problems


def check_objects(objects: list[dict], where: str) -> list[str]:
    problems = []
    names: dict[str, set[str]] = {}
    for item in objects:
        names.setdefault(item["kind"], set()).add(item["metadata"]["name"])
    if "Secret" in names:
        secrets = sorted(names["Secret"])
        problems.append(f"{where}: renders Secret {secrets}; secrets are created, not committed")
    config: dict[str, str] = {}
    for item in objects:
        if item["kind"] != "ConfigMap":
            continue
        config |= item.get("data", {})
        for key, value in item.get("data", {}).items():
            if key in CREDENTIAL_ENV or URL_CREDENTIALS.search(str(value)):
                problems.append(f"{where}: ConfigMap {item['metadata']['name']} holds a credential in {key}")
    deployments = {item["metadata"]["name"]: item for item in objects if item["kind"] == "Deployment"}
    for name in ROLES.keys() - deployments.keys():
        problems.append(f"{where}: no Deployment {name}")
    pod_labels = {}
    for name, deployment in deployments.items():
        template = deployment["spec"]["template"]
        pod_labels[name] = template["metadata"].get("labels", {})
        if not selects(deployment["spec"]["selector"], pod_labels[name]):
            problems.append(f"{where}: Deployment {name}'s selector does not match its pod labels")
        found = container_problems(name, template["spec"], config, names)
        problems += [f"{where}: {problem}" for problem in found]
    covered = set()
    for item in objects:
        kind, name, spec = item["kind"], item["metadata"]["name"], item.get("spec", {})
        if kind not in ("Service", "PodDisruptionBudget"):
            continue
        matched = [pods for pods, labels in pod_labels.items() if selects(spec.get("selector", {}), labels)]
        if not matched:
            problems.append(f"{where}: {kind} {name} selects no Deployment's pods")
        if kind == "PodDisruptionBudget":
            covered |= set(matched)
            continue
        for port in spec.get("ports", []):
            for pods in matched:
                container = deployments[pods]["spec"]["template"]["spec"]["containers"][0]
                if port.get("targetPort", port["port"]) not in container_ports(container):
                    target = port.get("targetPort")
                    problems.append(f"{where}: Service {name} targets {target}, not a port of {pods}")
    for name in deployments.keys() - covered:
        problems.append(f"{where}: Deployment {name} has no PodDisruptionBudget")
    return problems


def check_kubernetes() -> list[str]:
    command = kustomize_command()
    folders = [K8S / "base", *sorted(path for path in (K8S / "overlays").iterdir() if path.is_dir())]
    problems = []
    for folder in folders:
        where = str(folder.relative_to(ROOT))
        objects = render(command, folder)
        found = validate_schemas(objects, where) + check_objects(objects, where)
        kinds = sorted({item["kind"] for item in objects})
        print(f"{where}: {len(objects)} objects ({', '.join(kinds)}), {len(found)} problems")
        problems += found
    return problems


# --- Compose ------------------------------------------------------------------------------------------------


def interpolation_default(value: str) -> str:
    """`${NAME:-default}` as compose resolves it when NAME is unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))


def validate_compose_schema() -> list[str]:
    command = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
    result = subprocess.run([*command, *map(str, COMPOSE_FILES)], capture_output=True, text=True)
    if result.returncode != 0:
        return [f"compose schema: {(result.stdout + result.stderr).strip()}"]
    return []


def check_scaled_compose() -> list[str]:
    path = COMPOSE_FILES[0]
    compose = yaml.safe_load(path.read_text())
    services = compose.get("services", {})
    problems = [
        f"{path.name}: no `{name}` service"
        for name in ("t2i-align", "postgres", "seaweedfs", "create-bucket", "prometheus", "grafana")
        if name not in services
    ]
    if problems:
        return problems
    server = services["t2i-align"]
    replicas = int(interpolation_default(server.get("deploy", {}).get("replicas", 1)))
    if replicas < 2:
        problems.append(f"{path.name}: t2i-align runs {replicas} replica(s); the file exists for several")
    environment = server.get("environment", {})
    if not str(environment.get("T2I_DATABASE_URL", "")).startswith("postgres://"):
        problems.append(f"{path.name}: T2I_DATABASE_URL does not name a Postgres database")
    if not str(environment.get("T2I_OBJECT_STORE", "")).startswith("s3://"):
        problems.append(f"{path.name}: T2I_OBJECT_STORE is not an s3:// bucket")
    if "seaweedfs:" not in str(environment.get("T2I_S3_ENDPOINT", "")):
        problems.append(f"{path.name}: T2I_S3_ENDPOINT is not the seaweedfs service")
    if not str(services["postgres"].get("image", "")).startswith("postgres:15"):
        problems.append(f"{path.name}: postgres is not the postgres:15 image")
    for name, service in services.items():
        for variable, value in dict(service.get("environment", {})).items():
            # What is written in the file itself, once every ${...} is taken out.
            literal = re.sub(r"\$\{[^}]*\}", "", str(value))
            secret = variable in CREDENTIAL_ENV - {"T2I_DATABASE_URL"} or variable.endswith("_PASSWORD")
            if (secret and literal) or URL_CREDENTIALS.search(literal):
                problems.append(f"{path.name}: {name}.{variable} is written here; use ${{...}} from .env")
    wanted = {
        "postgres": "service_healthy",
        "seaweedfs": "service_healthy",
        "create-bucket": "service_completed_successfully",
    }
    depends = server.get("depends_on", {})
    for name, condition in wanted.items():
        if not isinstance(depends, dict) or depends.get(name, {}).get("condition") != condition:
            problems.append(f"{path.name}: t2i-align must depend on {name} with condition {condition}")
    for name in ("t2i-align", "postgres", "seaweedfs"):
        if not services[name].get("healthcheck", {}).get("test"):
            problems.append(f"{path.name}: {name} has no healthcheck")
    if "/ready" not in json.dumps(server.get("healthcheck", {})):
        problems.append(f"{path.name}: t2i-align's healthcheck does not ask /ready")
    if "seaweedfs" not in json.dumps(services["create-bucket"].get("depends_on", {})):
        problems.append(f"{path.name}: create-bucket does not wait for seaweedfs")
    mounts = {}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target = interpolation_default(volume).split(":")[:2]
            mounts[(name, target)] = source
            if source.startswith((".", "/")) and not (path.parent / source).exists():
                problems.append(f"{path.name}: {name} mounts {source}, which does not exist")
    if ("t2i-align", "/data") in mounts:
        problems.append(f"{path.name}: /data is replica-local; a volume there is shared by every replica")
    if mounts.get(("prometheus", "/etc/prometheus/prometheus.yml")) != "./prometheus.scale.yml":
        problems.append(f"{path.name}: prometheus does not mount prometheus.scale.yml")
    if mounts.get(("grafana", "/etc/grafana/provisioning")) != "./grafana/provisioning":
        problems.append(f"{path.name}: grafana does not mount the committed provisioning")
    problems += check_env_template(path.parent)
    return problems


def check_env_template(deploy: Path) -> list[str]:
    """deploy/.env.example names every variable the compose files require, and deploy/.env is git-ignored."""
    problems = []
    example = (deploy / ".env.example").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", (deploy / "compose.scale.yml").read_text()))
    for name in sorted(required):
        if not re.search(rf"^{name}=", example, re.MULTILINE):
            problems.append(f".env.example: no {name}, which compose.scale.yml requires")
    ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", str(deploy / ".env")])
    if ignored.returncode != 0:
        problems.append("deploy/.env is not git-ignored")
    return problems


def check_keys_required() -> list[str]:
    """Safe by default (#28): each compose file's t2i-align requires a bootstrap key
    (`${T2I_API_KEYS:?...}`) and sets T2I_REQUIRE_AUTH, and the Dockerfile's image requires keys, so no
    documented deployment serves open."""
    problems = []
    for path in COMPOSE_FILES:
        if not path.name.startswith(("compose", "docker-compose")):
            continue
        environment = yaml.safe_load(path.read_text())["services"]["t2i-align"].get("environment", {})
        if not re.fullmatch(r"\$\{T2I_API_KEYS:\?[^}]+\}", str(environment.get("T2I_API_KEYS", ""))):
            problems.append(f"{path.name}: T2I_API_KEYS must be required (${{T2I_API_KEYS:?message}})")
        if str(environment.get("T2I_REQUIRE_AUTH", "")).lower() != "true":
            problems.append(f'{path.name}: T2I_REQUIRE_AUTH must be "true"')
    if not re.search(r"^\s*T2I_REQUIRE_AUTH=true\b", (ROOT / "Dockerfile").read_text(), re.MULTILINE):
        problems.append("Dockerfile: the image must set T2I_REQUIRE_AUTH=true")
    return problems


def check_prometheus() -> list[str]:
    config = ROOT / "deploy" / "prometheus.scale.yml"
    if not shutil.which("promtool"):
        print("prometheus.scale.yml: promtool missing (make system-deps installs it), not checked")
        return []
    result = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True)
    if result.returncode != 0:
        return [f"promtool check config {config.name}: {(result.stdout + result.stderr).strip()}"]
    return []


def check_compose() -> list[str]:
    problems = validate_compose_schema() + check_scaled_compose() + check_keys_required() + check_prometheus()
    names = ", ".join(path.name for path in COMPOSE_FILES)
    print(f"compose ({names}, prometheus.scale.yml): {len(problems)} problems")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args()
    problems = check_kubernetes() + check_compose()
    if problems:
        print(f"\ndeploy-check: {len(problems)} problems", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(f"deploy-check: ok (Kubernetes {KUBERNETES_VERSION} schemas, strict; Compose specification)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
