"""Real Kubernetes nodes on this machine: containerd + runc + CNI under a real kubelet.

Layout (one cluster network per cluster, one set of processes per node):

* **Cluster network**: a network namespace the harness creates, joined to this machine by a
  veth pair. The host end carries the address the kube-apiserver listens on; the namespace
  end carries one address per node (the kubelet refuses a loopback node IP). Pods live on a
  bridge per node inside that namespace (CNI ``bridge`` + ``host-local``, one /24 per node). The
  namespace has no default route, so nothing a pod or node sends can leave this machine; the
  host routes the pod and Service ranges into it, so tests reach pod IPs and ClusterIPs.
  kube-proxy (iptables mode) runs once per cluster network: every node shares that network
  stack, so one set of Service rules serves them all.
* **Node**: containerd with its own root, state and socket under the node's directory, and the
  kubelet, in one private mount namespace (the kubelet's device-plugin directory is a fixed
  path, so each node gets its own through a bind mount; every mount dies with the namespace).
  All node processes and every container run in cgroups under ``/kvscale-<cluster>/`` in each
  cgroup v1 hierarchy; teardown kills whatever is left there, so nothing outlives the harness,
  also after a crash (the next start sweeps what a dead harness left).
* **GPUs**: ``kvscale.testing.device_plugin`` registers fake ``nvidia.com/gpu`` devices with
  the kubelet, and the node carries the GPU feature discovery labels and the GPU taint of the
  kwok GPU nodes, so the scheduler treats it as a GPU node.

Needs root, Debian's containerd, runc, containernetworking-plugins, iptables and conntrack.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .binaries import Binaries
from .fleet import NodePool, node_manifest
from .pki import PKI

CGROUP_ROOT = Path("/sys/fs/cgroup")
CNI_BIN_DIR = Path("/usr/lib/cni")
SYSTEM_BINARIES = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "conntrack", "nsenter",
                   "unshare", "ip")
#: where a harness records what it created, so that the next start can sweep what a dead one left
REGISTRY_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kvscale" / "real-nodes"
#: A node's image store (containerd's root: content and snapshots) outlives a cluster, as a node's disk
#: outlives a reboot: the vLLM CPU image is 6 GB, and importing it costs minutes per node per run.
#: One cluster at a time uses a store (containerd's own lock on its metadata says whether one does);
#: a node whose store is in use gets a fresh one under the cluster's directory.
IMAGE_STORES = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kvscale" / "node-images"
#: the kernel settings the kubelet sets on start (protectKernelDefaults false); restored on teardown
KUBELET_SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
                   "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")
#: address blocks: cluster network k uses 10.250.k.0/24 for host + nodes, 10.(100+k).0.0/16 for pods
#: and 10.(150+k).0.0/16 for Services; all of them live only on this machine
MAX_NETWORKS = 50
HOST_SYSCTLS = "host-sysctls.json"


class RealNodeError(RuntimeError):
    """A real node could not start; the message names the component and shows its log tail."""


def _log(msg: str) -> None:
    print(f"[kvscale real-node] {msg}", file=sys.stderr, flush=True)


def missing_system_binaries() -> list[str]:
    missing = [b for b in SYSTEM_BINARIES if shutil.which(b) is None]
    if not (CNI_BIN_DIR / "bridge").exists():
        missing.append(f"{CNI_BIN_DIR}/bridge (containernetworking-plugins)")
    return missing


def _sh(*cmd: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, input=input)
    if check and proc.returncode != 0:
        raise RealNodeError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


def _hierarchies(with_unified: bool = False) -> list[Path]:
    """The mounted cgroup v1 hierarchies (one directory per controller set, plus the named systemd one);
    runc also mirrors its cgroups into the v2 ``unified`` tree, which teardown must clean as well."""
    return [p for p in sorted(CGROUP_ROOT.iterdir())
            if p.is_dir() and not p.is_symlink() and (with_unified or p.name != "unified")
            and (p / "cgroup.procs").exists()]


def _make_cgroup(rel: str) -> None:
    for h in _hierarchies():
        parts = Path(rel).parts
        path = h
        for part in parts:
            parent, path = path, path / part
            if not path.exists():
                path.mkdir()
                if (path / "cpuset.cpus").exists():  # cpuset children start empty: inherit the parent's
                    for f in ("cpuset.cpus", "cpuset.mems"):
                        (path / f).write_text((parent / f).read_text())


def _join_cgroup(rel: str) -> None:
    for h in _hierarchies():
        with contextlib.suppress(OSError):
            (h / rel / "cgroup.procs").write_text(str(os.getpid()))


def _cgroup_pids(rel: str) -> set[int]:
    pids: set[int] = set()
    for h in _hierarchies(with_unified=True):
        base = h / rel
        if not base.exists():
            continue
        for procs in base.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(x) for x in procs.read_text().split())
    return pids


def kill_cgroup_tree(rel: str, timeout: float = 15.0) -> None:
    """SIGKILL every process under ``rel`` (all hierarchies), then remove the cgroups bottom-up."""
    deadline = time.monotonic() + timeout
    while (pids := _cgroup_pids(rel)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    for h in _hierarchies(with_unified=True):
        base = h / rel
        if not base.exists():
            continue
        for d in sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            base.rmdir()


def _preexec(cgroup: str | None, tie_to_parent: bool) -> Callable[[], None]:
    def run() -> None:
        if cgroup:
            _join_cgroup(cgroup)
        if tie_to_parent:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        os.setsid()
    return run


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def restore_host_sysctls() -> None:
    """Put back the kernel settings the kubelets changed, once no cluster with real nodes is left."""
    saved = REGISTRY_DIR / HOST_SYSCTLS
    if not saved.exists() or any(p.name != HOST_SYSCTLS for p in REGISTRY_DIR.glob("*.json")):
        return
    for key, value in json.loads(saved.read_text()).items():
        with contextlib.suppress(OSError):
            Path("/proc/sys", key).write_text(value)
    saved.unlink(missing_ok=True)


def sweep_stale() -> list[str]:
    """Tear down real-node leftovers of harnesses that died without cleaning up; names what went."""
    swept = []
    for entry in sorted(REGISTRY_DIR.glob("*.json")) if REGISTRY_DIR.exists() else []:
        if entry.name == HOST_SYSCTLS:
            continue
        with contextlib.suppress(Exception):
            state = json.loads(entry.read_text())
            if _pid_alive(int(state["owner_pid"])):
                continue
            kill_cgroup_tree(state["cgroup"])
            shutil.rmtree(socket_dir(state["cgroup"]), ignore_errors=True)
            _sh("ip", "netns", "delete", state["netns"], check=False)
            swept.append(state["netns"])
        entry.unlink(missing_ok=True)
    restore_host_sysctls()
    return swept


@dataclass
class ClusterNetwork:
    """The cluster's network namespace, its veth link to the host, and the address plan."""

    index: int
    cluster_id: str

    @property
    def netns(self) -> str:
        return f"kvscale-{self.cluster_id}"

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"

    @property
    def host_ip(self) -> str:
        return f"10.250.{self.index}.1"

    @property
    def router_ip(self) -> str:
        return f"10.250.{self.index}.2"

    def node_ip(self, i: int) -> str:
        return f"10.250.{self.index}.{10 + i}"

    @property
    def pod_cidr(self) -> str:
        return f"10.{100 + self.index}.0.0/16"

    def node_pod_cidr(self, i: int) -> str:
        return f"10.{100 + self.index}.{i}.0/24"

    @property
    def service_cidr(self) -> str:
        return f"10.{150 + self.index}.0.0/16"

    def bridge(self, i: int) -> str:
        """Node i's pod bridge (the CNI bridge plugin wants one gateway address per bridge)."""
        return f"kvs{self.index}br{i}"

    @property
    def _veth_host(self) -> str:
        return f"kvs{self.index}h"

    @property
    def _veth_ns(self) -> str:
        return f"kvs{self.index}n"

    def in_ns(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _sh("ip", "netns", "exec", self.netns, *cmd, check=check)

    @staticmethod
    def pick(cluster_id: str) -> ClusterNetwork:
        used = _sh("ip", "-o", "addr", "show").stdout + _sh("ip", "route").stdout
        for k in range(MAX_NETWORKS):
            if f"10.250.{k}." not in used and f"kvs{k}h" not in used:
                return ClusterNetwork(k, cluster_id)
        raise RealNodeError(f"all {MAX_NETWORKS} cluster networks (10.250.0-{MAX_NETWORKS - 1}.0/24) are in use")

    def create(self, nodes: int) -> None:
        _sh("ip", "netns", "add", self.netns)
        _sh("ip", "link", "add", self._veth_host, "type", "veth", "peer", "name", self._veth_ns)
        _sh("ip", "link", "set", self._veth_ns, "netns", self.netns)
        _sh("ip", "addr", "add", f"{self.host_ip}/24", "dev", self._veth_host)
        _sh("ip", "link", "set", self._veth_host, "up")
        self.in_ns("ip", "link", "set", "lo", "up")
        self.in_ns("ip", "addr", "add", f"{self.router_ip}/24", "dev", self._veth_ns)
        for i in range(nodes):
            self.in_ns("ip", "addr", "add", f"{self.node_ip(i)}/32", "dev", self._veth_ns)
        self.in_ns("ip", "link", "set", self._veth_ns, "up")
        self.in_ns("sysctl", "-qw", "net.ipv4.ip_forward=1")
        # the bridge exists before the first pod, so pod and Service routes can point at the namespace now
        for i in range(nodes):
            self.in_ns("ip", "link", "add", self.bridge(i), "type", "bridge")
            self.in_ns("ip", "link", "set", self.bridge(i), "up")
        for cidr in (self.pod_cidr, self.service_cidr):
            _sh("ip", "route", "add", cidr, "via", self.router_ip, "dev", self._veth_host)

    def delete(self) -> None:
        # deleting the namespace removes the veth pair (and with it the host routes), the bridge and all
        # iptables state kube-proxy and the CNI plugins made there
        _sh("ip", "netns", "delete", self.netns, check=False)
        _sh("ip", "link", "delete", self._veth_host, check=False)


@dataclass
class RealNode:
    """One kubelet node: containerd, kubelet and the fake-GPU device plugin, all under ``directory``."""

    name: str
    index: int
    pool: NodePool
    directory: Path
    network: ClusterNetwork
    cgroup_top: str
    binaries: Binaries
    tie_to_parent: bool = True
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _files: dict[str, Path] = field(default_factory=dict)

    @property
    def ip(self) -> str:
        return self.network.node_ip(self.index)

    @property
    def cgroup_root(self) -> str:
        """The kubelet's cgroupRoot: it puts ``kubepods`` under it."""
        return f"{self.cgroup_top}/{self.name}"

    @property
    def system_cgroup(self) -> str:
        return f"{self.cgroup_top}/{self.name}-system"

    def pick_image_store(self) -> Path:
        shared = IMAGE_STORES / self.name
        if _store_free(shared):
            return shared
        return self.directory / "containerd" / "root"

    @property
    def containerd_socket(self) -> Path:
        """Under /run: a unix socket path must stay under 104 bytes, which a test's directory may exceed."""
        return socket_dir(self.cgroup_top) / self.name / "containerd.sock"

    def log(self, component: str) -> Path:
        return self.directory / "logs" / f"{component}.log"

    def log_tail(self, component: str, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log(component).read_text(errors="replace").splitlines()[-n:])
        return ""

    # ----- configuration files -----
    def _write_configs(self, pki: PKI, kubeconfig: Callable[[Path, Any], Path]) -> dict[str, Path]:
        d = self.directory
        root = self.pick_image_store()
        root.mkdir(parents=True, exist_ok=True)
        self.containerd_socket.parent.mkdir(parents=True, exist_ok=True)
        for sub in ("containerd/state", "cni/net.d", "cni/ipam", "kubelet", "pod-logs",
                    "container-logs", "logs", "kubelet-pki"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        from .images import PAUSE_IMAGE

        containerd = {
            "version": 2, "root": str(root), "state": str(d / "containerd/state"),
            "grpc": {"address": str(self.containerd_socket)},
            "ttrpc": {"address": str(self.containerd_socket) + ".ttrpc"},
            "metrics": {"address": ""},
            "disabled_plugins": ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                                 "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
                                 "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"],
            "plugins": {
                "io.containerd.grpc.v1.cri": {
                    "sandbox_image": PAUSE_IMAGE,
                    # runc cannot lower oom_score_adj for the pause container without CAP_SYS_RESOURCE
                    "restrict_oom_score_adj": True,
                    "disable_apparmor": True,
                    "stream_server_address": "127.0.0.1", "stream_server_port": "0",
                    "containerd": {"snapshotter": "overlayfs", "default_runtime_name": "runc", "runtimes": {
                        "runc": {"runtime_type": "io.containerd.runc.v2",
                                 "options": {"SystemdCgroup": False, "BinaryName": shutil.which("runc")}}}},
                    "cni": {"bin_dir": str(CNI_BIN_DIR), "conf_dir": str(d / "cni/net.d"), "max_conf_num": 1},
                },
                "io.containerd.internal.v1.opt": {"path": str(d / "containerd/opt")},
            },
        }
        files = {"containerd": d / "containerd.toml"}
        files["containerd"].write_text(_toml(containerd))
        cni = {"cniVersion": "1.0.0", "name": "kvscale", "plugins": [{
            "type": "bridge", "bridge": self.network.bridge(self.index), "isGateway": True, "isDefaultGateway": True,
            "ipMasq": False, "hairpinMode": True,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": self.network.node_pod_cidr(self.index)}]],
                     "dataDir": str(d / "cni/ipam")}}]}
        (d / "cni/net.d/10-kvscale.conflist").write_text(json.dumps(cni, indent=1))
        (d / "resolv.conf").write_text("# pods on kvscale's local real nodes have no DNS\nnameserver 127.0.0.1\n")
        node_cert = pki.issue(f"node-{self.name}", f"system:node:{self.name}", "system:nodes")
        serving = pki.issue(f"node-{self.name}-serving", f"system:node:{self.name}", "system:nodes", server=True,
                            hosts=(self.ip, self.name))
        files["kubeconfig"] = kubeconfig(d / "kubelet.kubeconfig", node_cert)
        kubelet_cfg = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": self.ip, "port": _free_port_in(), "readOnlyPort": 0,
            "healthzBindAddress": self.ip, "healthzPort": _free_port_in(),
            "tlsCertFile": str(serving.cert), "tlsPrivateKeyFile": str(serving.key),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(pki.ca_cert)}},
            "authorization": {"mode": "AlwaysAllow"},
            "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{self.cgroup_root}", "cgroupsPerQOS": True,
            "failCgroupV1": False, "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "clusterDomain": "cluster.local", "resolvConf": str(d / "resolv.conf"),
            # the eviction manager cannot read filesystem stats for this machine's root device; memory is
            # the signal that matters for these pods, so only it may evict
            "evictionHard": {"memory.available": "200Mi"}, "evictionPressureTransitionPeriod": "30s",
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False, "maxPods": 110, "nodeStatusUpdateFrequency": "5s",
            "registerWithTaints": node_manifest(self.pool, self.index)["spec"].get("taints", []),
            "rotateCertificates": False, "protectKernelDefaults": False,
            "containerLogMaxSize": "10Mi", "shutdownGracePeriod": "0s",
        }
        files["kubelet"] = d / "kubelet.yaml"
        files["kubelet"].write_text(yaml.safe_dump(kubelet_cfg))
        return files

    def labels(self) -> dict[str, str]:
        skip = {"type", "kubernetes.io/hostname", "kubernetes.io/os", "kubernetes.io/arch"}
        labels = {k: v for k, v in node_manifest(self.pool, self.index)["metadata"]["labels"].items()
                  if k not in skip}
        return {**labels, "type": "real", "kvscale.io/real-node": "true"}

    # ----- processes -----
    def _spawn(self, component: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        with self.log(component).open("ab") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    preexec_fn=_preexec(self.system_cgroup, self.tie_to_parent))
        self.procs[component] = proc
        return proc

    def _ns_prefix(self) -> list[str]:
        containerd = self.procs["containerd"]
        return ["nsenter", f"--net={self.network.netns_path}", f"--mount=/proc/{containerd.pid}/ns/mnt", "--"]

    def start_runtime(self, pki: PKI, kubeconfig: Callable[[Path, Any], Path], timeout: float = 180.0) -> None:
        """containerd in the node's own mount namespace, inside the cluster network."""
        _make_cgroup(self.cgroup_root)
        _make_cgroup(self.system_cgroup)
        files = self._write_configs(pki, kubeconfig)
        d = self.directory
        binds = [(d / "kubelet", "/var/lib/kubelet"), (d / "pod-logs", "/var/log/pods"),
                 (d / "container-logs", "/var/log/containers")]
        script = ["set -e"]
        for src, target in binds:
            script += [f"mkdir -p {target}", f"mount --bind {src} {target}"]
        # shim sockets and network-namespace files stay inside this node's mount namespace
        script += ["mkdir -p /run/containerd /run/netns", "mount -t tmpfs tmpfs /run/containerd",
                   "mount -t tmpfs tmpfs /run/netns", f"exec containerd --config {files['containerd']}"]
        self._spawn("containerd", ["nsenter", f"--net={self.network.netns_path}", "--", "unshare", "--mount",
                                   "--propagation", "private", "sh", "-c", "\n".join(script)])
        self._wait(lambda: self.ctr("version").returncode == 0, "containerd", timeout)
        self._files = files

    def import_images(self, images: dict[str, Path]) -> None:
        """Import what the node's store lacks (no subprocess here needs a pre-exec hook: thread-safe)."""
        present = self.image_digests()
        for ref, layout in images.items():
            if present.get(ref) != _layout_digest(layout):
                self.import_image(ref, layout)

    def start_kubelet(self) -> None:
        files, d = self._files, self.directory
        labels = ",".join(f"{k}={v}" for k, v in self.labels().items())
        self._spawn("kubelet", [*self._ns_prefix(), self.binaries.path("kubelet"), f"--config={files['kubelet']}",
                                f"--kubeconfig={files['kubeconfig']}", f"--hostname-override={self.name}",
                                f"--node-ip={self.ip}", f"--node-labels={labels}",
                                f"--cert-dir={d / 'kubelet-pki'}", "--v=1"])
        gpu_resource = self._gpu_resource()
        self._spawn("device-plugin", [*self._ns_prefix(), sys.executable, "-m", "kvscale.testing.device_plugin",
                                      "--resource", gpu_resource, "--count", str(self.pool.gpus_per_node),
                                      "--node", self.name])

    def _gpu_resource(self) -> str:
        from ..estimator.gpus import default_catalog

        return default_catalog().get(self.pool.gpu).resource_name

    def _wait(self, probe: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(Exception):
                if probe():
                    return
            time.sleep(0.3)
        raise RealNodeError(f"{self.name}: timed out after {timeout:.0f}s waiting for {what}")

    def check_alive(self) -> None:
        for component, proc in self.procs.items():
            if proc.poll() is not None:
                raise RealNodeError(f"{self.name}: {component} exited with {proc.returncode}:\n"
                                    f"{self.log_tail(component)}")

    def ctr(self, *args: str, input_path: Path | None = None) -> subprocess.CompletedProcess[str]:
        cmd = ["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args]
        if input_path is None:
            return subprocess.run(cmd, capture_output=True, text=True)
        with input_path.open("rb") as fh:
            return subprocess.run(cmd, stdin=fh, capture_output=True, text=True)

    def import_image(self, ref: str, layout: Path) -> None:
        """Stream an OCI layout into this node's containerd and unpack it for the CRI."""
        started = time.monotonic()
        # blobs the store already holds (the 6 GB vLLM layer, after a change above it) are not streamed again
        have = set(self.ctr("content", "ls", "-q").stdout.split())
        skip = [f"--exclude=./blobs/sha256/{d.split(':', 1)[1]}" for d in have if d.startswith("sha256:")]
        tar = subprocess.Popen(["tar", "-C", str(layout), *skip, "-cf", "-", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        imp = subprocess.run(["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", "images",
                              "import", "--snapshotter", "overlayfs", "--no-unpack=false", "-"],
                             stdin=tar.stdout, capture_output=True, text=True)
        tar.stdout.close()
        tar.wait()
        if imp.returncode != 0:
            raise RealNodeError(f"{self.name}: importing {ref} failed: {imp.stderr.strip()[-1500:]}")
        listed = self.ctr("images", "ls", "-q").stdout.split()
        if ref not in listed:
            raise RealNodeError(f"{self.name}: {ref} missing after import (have {listed})")
        _log(f"{self.name}: imported {ref} in {time.monotonic() - started:.0f}s")

    def image_digests(self) -> dict[str, str]:
        out = {}
        for line in self.ctr("images", "ls").stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 3:
                out[parts[0]] = parts[2]
        return out

    def task_pid(self, container_id: str) -> int:
        """Host PID of a container's main process (``containerStatuses[].containerID`` without the scheme)."""
        cid = container_id.split("://", 1)[-1]
        for line in self.ctr("tasks", "ls").stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 2 and parts[0] == cid:
                return int(parts[1])
        raise RealNodeError(f"{self.name}: no running task for container {cid}")

    def stop(self) -> None:
        kubelet = self.procs.get("kubelet")
        if kubelet is not None and kubelet.poll() is None:
            kubelet.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                kubelet.wait(timeout=10)
        for root in (self.cgroup_root, self.system_cgroup):
            kill_cgroup_tree(root)
        for component, proc in self.procs.items():
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            try:
                proc.wait(timeout=EXIT_WAIT_S)
            except subprocess.TimeoutExpired:
                _log(f"{self.name}: {component} (pid {proc.pid}) still exiting after SIGKILL and {EXIT_WAIT_S:.0f}s")
                _UNREAPED.append(proc)  # reaped by the interpreter at exit rather than dropped while running
        self.procs.clear()


#: the last process of a node's mount namespace unmounts its image snapshots on exit: a killed
#: containerd holding the vLLM image's overlays takes seconds, not milliseconds, to go
EXIT_WAIT_S = 60.0
_UNREAPED: list[subprocess.Popen[bytes]] = []


def socket_dir(cgroup_top: str) -> Path:
    return Path("/run") / cgroup_top


def _store_free(root: Path) -> bool:
    """Whether no containerd holds the image store at ``root`` (bolt keeps an exclusive lock on its metadata)."""
    import fcntl

    meta = root / "io.containerd.metadata.v1.bolt" / "meta.db"
    if not meta.exists():
        return True
    with meta.open("rb") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
    return True


def _layout_digest(layout: Path) -> str:
    index = json.loads((layout / "index.json").read_text())
    return str(index["manifests"][0]["digest"])


def _free_port_in() -> int:
    from .vllm_server import free_port

    return free_port()


def _toml(data: dict[str, Any]) -> str:
    """TOML for containerd's config (nested tables, strings, booleans, ints, string lists)."""
    lines: list[str] = []

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v))

    def table(prefix: str, d: dict[str, Any]) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        if prefix:
            lines.append(f"\n[{prefix}]")
        lines.extend(f"{k} = {value(v)}" for k, v in scalars.items())
        for k, v in d.items():
            if isinstance(v, dict):
                key = k if "." not in k and "/" not in k else json.dumps(k)
                table(f"{prefix}.{key}" if prefix else key, v)

    table("", data)
    return "\n".join(lines) + "\n"


@dataclass
class RealNodes:
    """The real nodes of one cluster, their shared network and kube-proxy."""

    count: int
    pool: NodePool
    workdir: Path
    binaries: Binaries
    tie_to_parent: bool = True
    cluster_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    network: ClusterNetwork | None = None
    nodes: list[RealNode] = field(default_factory=list)
    proxy: subprocess.Popen[bytes] | None = None

    @property
    def cgroup_top(self) -> str:
        return f"kvscale-{self.cluster_id}"

    @property
    def registry_entry(self) -> Path:
        return REGISTRY_DIR / f"{self.cluster_id}.json"

    def prepare_network(self) -> ClusterNetwork:
        """Before the apiserver starts: it listens on the host end of the cluster network."""
        missing = missing_system_binaries()
        if missing:
            raise RealNodeError(f"real nodes need {', '.join(missing)} (Debian: containerd runc "
                                "containernetworking-plugins iptables conntrack; `make system-deps`)")
        swept = sweep_stale()
        if swept:
            _log(f"swept leftovers of dead harnesses: {', '.join(swept)}")
        self.network = ClusterNetwork.pick(self.cluster_id)
        REGISTRY_DIR.mkdir(parents=True, exist_ok=True)
        self.registry_entry.write_text(json.dumps({"owner_pid": os.getpid(), "netns": self.network.netns,
                                                   "cgroup": self.cgroup_top}))
        # the host's own values, recorded by the first cluster that starts and restored by the last that stops
        saved = REGISTRY_DIR / HOST_SYSCTLS
        if not saved.exists():
            values = {}
            for key in KUBELET_SYSCTLS:
                with contextlib.suppress(OSError):
                    values[key] = Path("/proc/sys", key).read_text().strip()
            saved.write_text(json.dumps(values))
        self.network.create(self.count)
        return self.network

    def node_names(self) -> list[str]:
        return [f"real-{self.pool.gpu.lower()}-{i}" for i in range(self.count)]

    def start(self, pki: PKI, kubeconfig: Callable[[Path, Any], Path], api_get: Callable[[str], Any],
              images: dict[str, Path], timeout: float = 240.0) -> None:
        assert self.network is not None
        _make_cgroup(self.cgroup_top)
        for i, name in enumerate(self.node_names()):
            node = RealNode(name, i, self.pool, self.workdir / "nodes" / name, self.network, self.cgroup_top,
                            self.binaries, self.tie_to_parent)
            self.nodes.append(node)
            node.start_runtime(pki, kubeconfig, timeout)
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=max(1, len(self.nodes))) as pool:  # imports are I/O-bound
            for future in [pool.submit(n.import_images, images) for n in self.nodes]:
                future.result()
        _log(f"images on {len(self.nodes)} node(s) in {time.monotonic() - t0:.0f}s")
        for node in self.nodes:
            node.start_kubelet()
        self._start_proxy(pki, kubeconfig)
        gpu_resource = self.nodes[0]._gpu_resource() if self.nodes else ""

        def ready() -> bool:
            for node in self.nodes:
                node.check_alive()
                if self.proxy is not None and self.proxy.poll() is not None:
                    raise RealNodeError(f"kube-proxy exited with {self.proxy.returncode}")
                obj = api_get(f"/api/v1/nodes/{node.name}")
                conds = {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])}
                gpus = obj.get("status", {}).get("allocatable", {}).get(gpu_resource, "0")
                if conds.get("Ready") != "True" or int(gpus) != self.pool.gpus_per_node:
                    return False
            return True

        deadline = time.monotonic() + timeout
        while not _quiet(ready):
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {n.name} kubelet:\n{n.log_tail('kubelet')}" for n in self.nodes)
                raise RealNodeError(f"real nodes not Ready with {self.pool.gpus_per_node} GPUs after "
                                    f"{timeout:.0f}s\n{tails}")
            time.sleep(0.5)
        if not self.tie_to_parent and self.nodes:  # a detached cluster lives as long as its first kubelet
            self.registry_entry.write_text(json.dumps({"owner_pid": self.nodes[0].procs["kubelet"].pid,
                                                       "netns": self.network.netns, "cgroup": self.cgroup_top}))
        _log(f"{self.count} real node(s) Ready: {', '.join(self.node_names())}")

    def _start_proxy(self, pki: PKI, kubeconfig: Callable[[Path, Any], Path]) -> None:
        assert self.network is not None and self.nodes
        d = self.workdir / "kube-proxy"
        d.mkdir(parents=True, exist_ok=True)
        pair = pki.issue("kube-proxy", "system:kube-proxy")
        cfg = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig(d / "kubeconfig", pair))},
            "hostnameOverride": self.nodes[0].name, "bindAddress": self.nodes[0].ip, "mode": "iptables",
            "healthzBindAddress": f"{self.nodes[0].ip}:{_free_port_in()}",
            "metricsBindAddress": f"{self.nodes[0].ip}:{_free_port_in()}",
            "clusterCIDR": self.network.pod_cidr,
            # pod -> Service -> pod on the same bridge needs the reply to come back through the node
            "iptables": {"masqueradeAll": True, "syncPeriod": "10s", "minSyncPeriod": "0s"},
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        with (d / "kube-proxy.log").open("ab") as fh:
            self.proxy = subprocess.Popen(
                ["nsenter", f"--net={self.network.netns_path}", "--", self.binaries.path("kube-proxy"),
                 f"--config={d / 'config.yaml'}", "--v=1"], stdout=fh, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=_preexec(None, self.tie_to_parent))

    def node(self, name: str) -> RealNode:
        return next(n for n in self.nodes if n.name == name)

    def stop(self) -> None:
        if self.proxy is not None:
            with contextlib.suppress(Exception):
                self.proxy.terminate()
                self.proxy.wait(timeout=5)
            if self.proxy.poll() is None:
                self.proxy.kill()
                self.proxy.wait(timeout=EXIT_WAIT_S)
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()
        kill_cgroup_tree(self.cgroup_top)
        shutil.rmtree(socket_dir(self.cgroup_top), ignore_errors=True)
        if self.network is not None:
            self.network.delete()
        self.registry_entry.unlink(missing_ok=True)
        restore_host_sysctls()


def _quiet(probe: Callable[[], bool]) -> bool:
    try:
        return probe()
    except RealNodeError:
        raise
    except Exception:
        return False


def real_node_pool(gpu: str = "L4", gpus_per_node: int = 2, memory_gib: int = 24, cpu: int = 2) -> NodePool:
    """The pool real nodes are labelled as (their capacity is this machine's, as the kubelet sees it)."""
    return NodePool(gpu=gpu, nodes=0, gpus_per_node=gpus_per_node, cpu=cpu, memory_gib=memory_gib)


__all__ = ["ClusterNetwork", "RealNode", "RealNodeError", "RealNodes", "real_node_pool",
           "sweep_stale"]
