"""The LeaderWorkerSet controller in the local control plane: built from its Go module, its CRD from
the same module, its admission webhooks served with the harness PKI on loopback.

In a real cluster the controller runs as a pod behind a Service and rotates its own certificate; here
it runs as a process beside the apiserver, so the webhook configurations name it by URL and carry the
harness CA, and its internal certificate management is off.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from .binaries import LWS, ensure_lws
from .processes import stop_group
from .vllm_server import free_port

#: the paths the controller serves its webhooks at (config/webhook/manifests.yaml of the module)
WEBHOOKS = {
    "MutatingWebhookConfiguration": [
        ("mleaderworkerset.kb.io", "/mutate-leaderworkerset-x-k8s-io-v1-leaderworkerset", "leaderworkersets", False),
        ("mpod.kb.io", "/mutate--v1-pod", "pods", True),
    ],
    "ValidatingWebhookConfiguration": [
        ("vleaderworkerset.kb.io", "/validate-leaderworkerset-x-k8s-io-v1-leaderworkerset", "leaderworkersets", False),
        ("vpod.kb.io", "/validate--v1-pod", "pods", True),
    ],
}
#: the pod webhooks only see LeaderWorkerSet pods (the module's kustomize patches add the same selector)
POD_SELECTOR = {"matchExpressions": [{"key": "leaderworkerset.sigs.k8s.io/name", "operator": "Exists"}]}


def webhook_configurations(port: int, ca_pem: bytes) -> list[dict[str, Any]]:
    """The module's webhook configurations, pointed at the controller on loopback."""
    out = []
    for kind, hooks in WEBHOOKS.items():
        webhooks = []
        for name, path, resource, pods in hooks:
            ops = ["CREATE"] if kind.startswith("Mutating") and pods else ["CREATE", "UPDATE"]
            hook: dict[str, Any] = {
                "name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail",
                "clientConfig": {"url": f"https://127.0.0.1:{port}{path}",
                                 "caBundle": base64.b64encode(ca_pem).decode()},
                "rules": [{"apiGroups": [""] if pods else ["leaderworkerset.x-k8s.io"], "apiVersions": ["v1"],
                           "operations": ops, "resources": [resource]}]}
            if pods:
                hook["objectSelector"] = POD_SELECTOR
            webhooks.append(hook)
        out.append({"apiVersion": "admissionregistration.k8s.io/v1", "kind": kind,
                    "metadata": {"name": f"lws-{kind.removesuffix('WebhookConfiguration').lower()}"},
                    "webhooks": webhooks})
    return out


@dataclass
class LWSController:
    """Run with ``start(cluster)``; ``stop()`` ends the process and removes its webhook configurations."""

    binaries: LWS | None = None
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    port: int = 0
    configurations: list[dict[str, Any]] = field(default_factory=list)

    def start(self, cluster: Any, timeout: float = 120.0) -> LWSController:
        assert cluster.workdir is not None and cluster.pki is not None
        self.binaries = self.binaries or ensure_lws()
        cluster.install_crd(self.binaries.crd.read_text())
        work = Path(cluster.workdir) / "lws"
        certs = work / "certs"
        certs.mkdir(parents=True, exist_ok=True)
        pair = cluster.pki.issue("lws-webhook", "lws-webhook", server=True, hosts=("127.0.0.1", "localhost"))
        (certs / "tls.crt").write_bytes(pair.cert.read_bytes())
        (certs / "tls.key").write_bytes(pair.key.read_bytes())
        self.port, health = free_port(), free_port()
        config = work / "config.yaml"
        config.write_text(yaml.safe_dump({
            "apiVersion": "config.lws.x-k8s.io/v1alpha1", "kind": "Configuration",
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "webhook": {"port": self.port, "host": "127.0.0.1", "certDir": str(certs)},
            "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"},
            "metrics": {"bindAddress": "0"}}))
        self.log = Path(cluster.workdir) / "logs" / "lws-controller.log"
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [str(self.binaries.controller), f"--config={config}", f"--kubeconfig={cluster.kubeconfig}"],
                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lws-controller exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{health}/readyz", timeout=2).status_code == 200 and \
                        self._serving():
                    break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"lws-controller not ready after {timeout:.0f}s:\n{self.tail()}")
        self.configurations = webhook_configurations(self.port, cluster.pki.ca_cert.read_bytes())
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(self.configurations))
        return self

    def _serving(self) -> bool:
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def tail(self, lines: int = 30) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, cluster: Any | None = None) -> None:
        if cluster is not None and self.configurations:
            for cfg in self.configurations:  # a webhook with no server behind it would refuse every LWS write
                cluster.kubectl("delete", cfg["kind"], cfg["metadata"]["name"], "--ignore-not-found", check=False)
        if self.proc is not None:
            stop_group(self.proc)
            self.proc = None
