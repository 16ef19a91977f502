"""Turn a pod of Dapr's control plane into a process: print a shell script that mounts the
pod's volumes at their paths (in the mount namespace of its own the script runs in) and
execs the container's command with the pod's arguments and environment.

The pod is real (Dapr's chart made its Deployment; kwok runs it on the fake node); this
plays the kubelet's part for its single container: configMap, secret, emptyDir and projected
volumes (service-account tokens bound to the pod, the cluster CA, the namespace) are written
under --dir, and the environment's field references are resolved from the pod.
Standard library only: scripts/k8s/cluster.sh runs it with any Python 3.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

Doc = dict[str, Any]
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# How long the tokens written for a pod stay valid (a kubelet would refresh them).
LIFETIME = "12h"


class Kubectl:
    def __init__(self, binary: str, namespace: str) -> None:
        self.binary = binary
        self.namespace = namespace

    def run(self, *args: str) -> str:
        result = subprocess.run(
            [self.binary, "-n", self.namespace, *args], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise SystemExit(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def get(self, kind: str, name: str) -> Doc:
        document: Doc = json.loads(self.run("get", kind, name, "-o", "json"))
        return document

    def token(self, pod: Doc, audience: str | None) -> str:
        args = ["create", "token", pod["spec"]["serviceAccountName"], "--duration", LIFETIME,
                "--bound-object-kind", "Pod", "--bound-object-name", pod["metadata"]["name"],
                "--bound-object-uid", pod["metadata"]["uid"]]  # fmt: skip
        if audience:
            args += ["--audience", audience]
        return self.run(*args).strip()


def write(directory: Path, name: str, content: bytes) -> None:
    # Atomically, as the kubelet swaps its ..data link: Dapr's operator exits on a half file.
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(content)
    os.replace(partial, path)


def field(pod: Doc, path: str) -> str:
    value: Any = pod
    for part in path.split("."):
        value = value.get(part, "") if isinstance(value, dict) else ""
    return str(value)


def fill_volume(volume: Doc, directory: Path, pod: Doc, kubectl: Kubectl) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if "emptyDir" in volume:
        return
    if "configMap" in volume:
        data = kubectl.get("configmap", volume["configMap"]["name"]).get("data") or {}
        for key, value in data.items():
            write(directory, key, value.encode())
    elif "secret" in volume:
        data = kubectl.get("secret", volume["secret"]["secretName"]).get("data") or {}
        for key, value in data.items():
            write(directory, key, base64.b64decode(value))
    elif "projected" in volume:
        for source in volume["projected"]["sources"]:
            if "serviceAccountToken" in source:
                spec = source["serviceAccountToken"]
                write(directory, spec["path"], kubectl.token(pod, spec.get("audience")).encode())
            elif "configMap" in source:
                data = kubectl.get("configmap", source["configMap"]["name"]).get("data") or {}
                for item in source["configMap"].get("items", [{"key": k, "path": k} for k in data]):
                    write(directory, item["path"], data[item["key"]].encode())
            elif "downwardAPI" in source:
                for item in source["downwardAPI"]["items"]:
                    write(
                        directory, item["path"], field(pod, item["fieldRef"]["fieldPath"]).encode()
                    )
            else:
                raise SystemExit(f"unsupported projected source in {volume['name']}: {source}")
    else:
        raise SystemExit(f"unsupported volume {volume['name']}: {sorted(volume)}")


def environment(container: Doc, pod: Doc, kubectl: Kubectl, api_server: str) -> dict[str, str]:
    host, _, port = api_server.rpartition(":")
    env = {
        "PATH": PATH,
        "HOSTNAME": pod["metadata"]["name"],
        # What the kubelet tells every container: where the API server is.
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": port,
        # Dapr's control plane refuses to run as root in Kubernetes mode; here there is no
        # container to run it as another user.
        "DAPR_UNSAFE_SKIP_CONTAINER_UID_GID_CHECK": "true",
    }
    for item in container.get("env", []):
        source = item.get("valueFrom")
        if source is None:
            env[item["name"]] = item.get("value", "")
        elif "fieldRef" in source:
            env[item["name"]] = field(pod, source["fieldRef"]["fieldPath"])
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            data = kubectl.get("secret", ref["name"]).get("data") or {}
            env[item["name"]] = base64.b64decode(data[ref["key"]]).decode()
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[item["name"]] = (kubectl.get("configmap", ref["name"]).get("data") or {})[
                ref["key"]
            ]
        else:
            raise SystemExit(f"unsupported env source for {item['name']}: {source}")
    return env


def script(args: argparse.Namespace) -> str:
    kubectl = Kubectl(args.kubectl, args.namespace)
    pod = kubectl.get("pod", args.pod)
    (container,) = pod["spec"]["containers"]
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    # The binaries and the volumes first move to the namespace's own /run: a volume mounted
    # at /tmp (the operator's emptyDir) must not hide a cache or state directory under /tmp.
    staged = Path("/run/podrun")
    (Path(args.dir) / "volumes").mkdir(parents=True, exist_ok=True)
    lines = [
        "set -eu",
        f"mkdir -p {staged}/bin {staged}/volumes",
        f"mount --bind {shlex.quote(args.bin_dir)} {staged}/bin",
        f"mount --bind {shlex.quote(str(Path(args.dir) / 'volumes'))} {staged}/volumes",
    ]
    for mount in container.get("volumeMounts", []):
        fill_volume(
            volumes[mount["name"]], Path(args.dir) / "volumes" / mount["name"], pod, kubectl
        )
        target = shlex.quote(mount["mountPath"])
        source = shlex.quote(str(staged / "volumes" / mount["name"]))
        lines.append(f"mkdir -p {target} && mount --bind {source} {target}")
    command = [str(staged / "bin" / Path(container["command"][0]).name)]
    command += [*container["command"][1:], *container.get("args", []), *args.extra]
    env = environment(container, pod, kubectl, args.api_server)
    assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in sorted(env.items()))
    lines.append(f"exec env -i {assignments} {shlex.join(command)}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--pod", required=True)
    parser.add_argument("--dir", required=True, help="where the pod's volumes are written")
    parser.add_argument("--bin-dir", required=True, help="where the container's command is")
    parser.add_argument("--api-server", required=True, help="host:port of the API server")
    parser.add_argument("--kubectl", required=True)
    parser.add_argument("extra", nargs="*", help="arguments appended to the container's")
    sys.stdout.write(script(parser.parse_args()))


if __name__ == "__main__":
    main()
