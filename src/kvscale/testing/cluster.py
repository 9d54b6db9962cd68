"""A real Kubernetes control plane as local processes, with kwok simulating GPU nodes.

etcd, kube-apiserver (RBAC on, client-certificate auth), kube-controller-manager and
kube-scheduler are the upstream binaries; kwok plays the kubelets, so pods bound to the
simulated nodes become Running and Ready and get pod IPs from a loopback range (real
processes on this machine can then serve "as" those pods). Everything lives in one
temporary directory and every process dies with the harness (also on a crash: children
get PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from .binaries import Binaries, ensure_binaries
from .fleet import DEFAULT_FLEET, NodePool, fleet_manifests
from .pki import PKI, CertPair
from .processes import stop_group
from .realnode import RealNodes, real_node_pool

POD_CIDR = "127.16.0.0/16"  # loopback: a process can bind any pod IP kwok hands out
SERVICE_CIDR = "10.96.0.0/16"
STATE_FILE = "kvscale-cluster.json"


#: the size of the last-applied annotation a client-side apply keeps (the apiserver's annotation limit)
LAST_APPLIED_LIMIT = 256 * 1024


class ClusterError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """Child pre-exec hook: SIGTERM when the harness process goes away, however it goes."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    os.setsid()


def _log(msg: str) -> None:
    print(f"[kvscale cluster] {msg}", file=sys.stderr, flush=True)


@dataclass
class Component:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    cmd: list[str] = field(default_factory=list)


@dataclass
class LocalCluster:
    fleet: tuple[NodePool, ...] = DEFAULT_FLEET
    workdir: Path | None = None
    tie_to_parent: bool = True
    keep_workdir: bool = False
    binaries: Binaries | None = None
    components: list[Component] = field(default_factory=list)
    apiserver_port: int = 0
    started_s: float = 0.0
    real_nodes: int = 0  # kubelet nodes with real containers, beside the kwok fleet
    real_pool: NodePool = field(default_factory=real_node_pool)
    real_node_images: tuple[str, ...] = ("pause", "vllm", "operator")
    real: RealNodes | None = None
    bind_address: str = "127.0.0.1"
    pki: PKI | None = None
    service_cidr: str = SERVICE_CIDR

    # ----- paths -------------------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "admin.kubeconfig"

    @property
    def server(self) -> str:
        return f"https://{self.bind_address}:{self.apiserver_port}"

    # ----- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> LocalCluster:
        t0 = time.monotonic()
        self.binaries = self.binaries or ensure_binaries()
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="kvscale-cluster-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        self.started_s = time.monotonic() - t0
        _log(f"control plane ready in {self.started_s:.1f}s; KUBECONFIG={self.kubeconfig}")
        return self

    def _start(self, timeout: float) -> None:
        assert self.workdir is not None and self.binaries is not None
        w, b = self.workdir, self.binaries
        images: dict[str, Path] = {}
        if self.real_nodes:
            from .images import ensure_images

            images = ensure_images(self.real_node_images)  # minutes on the first run, cached after
            self.real = RealNodes(self.real_nodes, self.real_pool, w, b, self.tie_to_parent)
            network = self.real.prepare_network()
            self.bind_address, self.service_cidr = network.host_ip, network.service_cidr
        kubernetes_service_ip = str(next(ipaddress.ip_network(self.service_cidr).hosts()))
        pki = self.pki = PKI(w / "pki")
        etcd_port, etcd_peer = _free_port(), _free_port()
        self.apiserver_port = _free_port()
        self._spawn("etcd", [
            b.path("etcd"), "--data-dir", str(w / "etcd"), "--name", "kvscale",
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-cluster", f"kvscale=http://127.0.0.1:{etcd_peer}",
            "--unsafe-no-fsync", "--quota-backend-bytes", str(4 << 30), "--log-level", "warn"])
        self._wait(lambda: httpx.get(f"http://127.0.0.1:{etcd_port}/health", timeout=2).status_code == 200,
                   "etcd healthy", timeout)
        serving = pki.issue("apiserver", "kube-apiserver", server=True,
                            hosts=(self.bind_address, "127.0.0.1", "localhost", kubernetes_service_ip, "kubernetes",
                                   "kubernetes.default",
                                   "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"))
        admin = pki.issue("admin", "kvscale-admin", "system:masters")
        cm = pki.issue("controller-manager", "system:kube-controller-manager")
        sched = pki.issue("scheduler", "system:kube-scheduler")
        kwok = pki.issue("kwok", "kwok-controller", "system:masters")
        kubelet_client = pki.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters")
        # with real nodes the kubernetes Service points at the apiserver (pods reach it there) and
        # EndpointSlices are made for Services (kwok's loopback pod IPs would be refused, so only then)
        reconciler = "lease" if self.real_nodes else "none"
        self._spawn("kube-apiserver", [
            b.path("kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--bind-address={self.bind_address}", f"--secure-port={self.apiserver_port}",
            f"--advertise-address={self.bind_address}", "--enable-admission-plugins=NodeRestriction",
            f"--kubelet-client-certificate={kubelet_client.cert}", f"--kubelet-client-key={kubelet_client.key}",
            "--kubelet-preferred-address-types=InternalIP",  # node names resolve nowhere: never ask DNS
            f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
            f"--client-ca-file={pki.ca_cert}", "--authorization-mode=Node,RBAC",
            f"--service-account-key-file={pki.sa_pub}", f"--service-account-signing-key-file={pki.sa_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={self.service_cidr}", "--allow-privileged=true",
            f"--endpoint-reconciler-type={reconciler}", "--profiling=false", "--max-requests-inflight=800",
            "--max-mutating-requests-inflight=400"])
        self._write_kubeconfig(self.kubeconfig, pki.ca_cert, admin)
        self._wait(self._readyz, "kube-apiserver ready", timeout)
        cm_cfg = self._write_kubeconfig(w / "controller-manager.kubeconfig", pki.ca_cert, cm)
        sched_cfg = self._write_kubeconfig(w / "scheduler.kubeconfig", pki.ca_cert, sched)
        kwok_cfg = self._write_kubeconfig(w / "kwok.kubeconfig", pki.ca_cert, kwok)
        self._spawn("kube-controller-manager", [
            b.path("kube-controller-manager"), f"--kubeconfig={cm_cfg}",
            f"--authentication-kubeconfig={cm_cfg}", f"--authorization-kubeconfig={cm_cfg}",
            "--bind-address=127.0.0.1", f"--secure-port={_free_port()}", "--leader-elect=false",
            f"--service-account-private-key-file={pki.sa_key}", f"--root-ca-file={pki.ca_cert}",
            "--use-service-account-credentials=true", f"--service-cluster-ip-range={self.service_cidr}",
            # kwok pod IPs are loopback addresses (so local processes can serve them), which EndpointSlices
            # refuse: the EndpointSlice controller runs only when real nodes give pods real addresses
            "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route,-endpoints-controller,"
            "-endpointslice-mirroring-controller" + ("" if self.real_nodes else ",-endpointslice-controller"),
            "--concurrent-gc-syncs=20", "--kube-api-qps=200", "--kube-api-burst=400"])
        self._spawn("kube-scheduler", [
            b.path("kube-scheduler"), f"--kubeconfig={sched_cfg}", f"--authentication-kubeconfig={sched_cfg}",
            f"--authorization-kubeconfig={sched_cfg}", "--bind-address=127.0.0.1",
            f"--secure-port={_free_port()}", "--leader-elect=false", "--kube-api-qps=200", "--kube-api-burst=400"])
        self._spawn("kwok", [
            b.path("kwok"), f"--kubeconfig={kwok_cfg}", "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--cidr={POD_CIDR}", "--node-ip=127.0.0.1", "--node-lease-duration-seconds=40",
            "--config", str(self._write_kwok_config())])
        self._wait(self._default_service_account, "default ServiceAccount (controller-manager up)", timeout)
        self.add_nodes(self.fleet)
        if self.real is not None:
            def api_get(path: str) -> Any:
                with self.http() as c:
                    return c.get(path).json()

            self.real.start(pki, lambda path, pair: self._write_kubeconfig(path, pki.ca_cert, pair), api_get, images)
        self._write_state()

    def stop(self) -> None:
        if self.real is not None:
            self.real.stop()
            self.real = None
        for comp in reversed(self.components):
            stop_group(comp.proc)
        self.components.clear()
        if self.workdir is not None and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- helpers -----------------------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str]) -> None:
        assert self.workdir is not None
        log = self.workdir / "logs" / f"{name}.log"
        with log.open("ab") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    preexec_fn=_die_with_parent if self.tie_to_parent else os.setsid)
        self.components.append(Component(name, proc, log, cmd))

    def outage(self, names: tuple[str, ...] = ("kube-apiserver", "etcd"), down_s: float = 5.0,
               timeout: float = 60.0) -> float:
        """Kill these components, keep them down ``down_s``, start them again with the same flags and
        data; returns the seconds until the apiserver answered /readyz again (a control-plane outage)."""
        down = [c for c in self.components if c.name in names]
        for comp in down:
            stop_group(comp.proc, 5)
            self.components.remove(comp)
        started = time.monotonic()
        time.sleep(down_s)
        order = ("etcd", "kube-apiserver")  # the store first
        for comp in sorted(down, key=lambda c: order.index(c.name) if c.name in order else len(order)):
            self._spawn(comp.name, comp.cmd)
        self._wait(self._readyz, "the apiserver back after an outage", timeout)
        return time.monotonic() - started

    def _check_alive(self) -> None:
        for comp in self.components:
            if comp.proc.poll() is not None:
                tail = "\n".join(comp.log.read_text(errors="replace").splitlines()[-25:])
                raise ClusterError(f"{comp.name} exited with {comp.proc.returncode}:\n{tail}")

    def _wait(self, probe: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(Exception):
                if probe():
                    return
            time.sleep(0.25)
        raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}")

    def http(self) -> httpx.Client:
        assert self.workdir is not None
        pki = self.workdir / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return httpx.Client(base_url=self.server, verify=ctx, timeout=10)

    def _readyz(self) -> bool:
        with self.http() as c:
            return c.get("/readyz").status_code == 200

    def _default_service_account(self) -> bool:
        with self.http() as c:
            return c.get("/api/v1/namespaces/default/serviceaccounts/default").status_code == 200

    def _write_kubeconfig(self, path: Path, ca: Path, pair: CertPair) -> Path:
        cfg = {
            "apiVersion": "v1", "kind": "Config", "current-context": "kvscale-local",
            "clusters": [{"name": "kvscale-local",
                          "cluster": {"server": self.server, "certificate-authority": str(ca)}}],
            "users": [{"name": "user", "user": {"client-certificate": str(pair.cert), "client-key": str(pair.key)}}],
            "contexts": [{"name": "kvscale-local", "context": {"cluster": "kvscale-local", "user": "user"}}],
        }
        path.write_text(yaml.safe_dump(cfg))
        return path

    def _write_kwok_config(self) -> Path:
        """kwok's stock node and pod lifecycle stages (nodes Ready, scheduled pods Running/Ready)."""
        assert self.workdir is not None
        path = self.workdir / "kwok.yaml"
        path.write_text(yaml.safe_dump_all(kwok_stages()))
        return path

    def _write_state(self) -> None:
        assert self.workdir is not None
        state: dict[str, Any] = {"kubeconfig": str(self.kubeconfig), "server": self.server,
                                 "pids": {c.name: c.proc.pid for c in self.components}}
        if self.real is not None and self.real.network is not None:
            state["real_nodes"] = {"cgroup": self.real.cgroup_top, "netns": self.real.network.netns,
                                   "registry": str(self.real.registry_entry)}
        (self.workdir / STATE_FILE).write_text(json.dumps(state, indent=1))

    def add_nodes(self, fleet: tuple[NodePool, ...]) -> list[str]:
        names = []
        with self.http() as c:
            for node in fleet_manifests(fleet):
                r = c.post("/api/v1/nodes", json=node)
                if r.status_code not in (200, 201, 409):
                    raise ClusterError(f"creating node {node['metadata']['name']}: {r.status_code} {r.text[:300]}")
                names.append(node["metadata"]["name"])
        self.wait_nodes_ready(names)
        return names

    def wait_nodes_ready(self, names: list[str], timeout: float = 60) -> None:
        """Block until every named node reports Ready (a node a test created itself, say)."""
        self._wait(lambda: self._nodes_ready(names), f"{len(names)} node(s) Ready: {', '.join(names)}", timeout)

    def _nodes_ready(self, names: list[str]) -> bool:
        with self.http() as c:
            items = c.get("/api/v1/nodes").json()["items"]
        ready = {n["metadata"]["name"] for n in items
                 if any(cd["type"] == "Ready" and cd["status"] == "True" for cd in n["status"].get("conditions", []))}
        return set(names) <= ready

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self.binaries is not None
        return subprocess.run([self.binaries.path("kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
                              input=input, capture_output=True, text=True, check=check)

    def install_crd(self, manifest: str, timeout: float = 90.0) -> None:
        """Apply a CRD manifest (YAML text) and wait until it is Established.

        Right after start-up the apiserver may still be initialising its storage, and ``kubectl wait``
        answers NotFound for a CRD it has not seen yet: both are retried until ``timeout``.
        """
        deadline = time.monotonic() + timeout
        name = yaml.safe_load(manifest)["metadata"]["name"]
        while True:
            # server-side: a large CRD (LeaderWorkerSet's embeds two pod templates) exceeds the 256 KiB
            # last-applied annotation a client-side apply keeps
            side = ["--server-side", "--force-conflicts"] if len(manifest) > LAST_APPLIED_LIMIT else []
            done = [self.kubectl("apply", *side, "-f", "-", input=manifest, check=False)]
            if done[0].returncode == 0:
                done.append(self.kubectl("wait", "--for=condition=Established", f"crd/{name}",
                                         "--timeout=30s", check=False))
                if done[-1].returncode == 0:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"CRD not Established after {timeout:.0f}s: {done[-1].stderr.strip()[-500:]}")
            time.sleep(1)

    def api_client(self) -> Any:
        from kubernetes import client, config

        return config.new_client_from_config(str(self.kubeconfig)) if client else None  # type: ignore[no-untyped-call]

    def component_rss_bytes(self) -> dict[str, int]:
        out = {}
        for comp in self.components:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{comp.proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        out[comp.name] = int(line.split()[1]) * 1024
        return out


def stop_from_state(workdir: Path) -> bool:
    """Stop a cluster started by another process (``kvscale dev-cluster down``)."""
    state_path = workdir / STATE_FILE
    if not state_path.exists():
        return False
    state = json.loads(state_path.read_text())
    real = state.get("real_nodes")
    if real:
        from .realnode import kill_cgroup_tree

        kill_cgroup_tree(real["cgroup"])
        shutil.rmtree(Path("/run") / real["cgroup"], ignore_errors=True)
        subprocess.run(["ip", "netns", "delete", real["netns"]], capture_output=True)
        Path(real["registry"]).unlink(missing_ok=True)
    for pid in reversed(list(state["pids"].values())):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for pid in state["pids"].values():
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    shutil.rmtree(workdir, ignore_errors=True)
    return True


@contextlib.contextmanager
def local_cluster(**kwargs: Any) -> Iterator[LocalCluster]:
    cluster = LocalCluster(**kwargs)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def kwok_stages() -> list[dict[str, Any]]:
    """Node heartbeat/initialisation and pod ready/delete stages (kwok's 'fast' lifecycle)."""
    text = (Path(__file__).parent / "kwok_stages.yaml").read_text()
    return [d for d in yaml.safe_load_all(text) if d]
