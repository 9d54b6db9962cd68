"""Fault scenarios against the real control plane and the operator as a process.

Each returns a report of what happened (values), which the chaos tests assert on and
``bench/chaos.py`` prints. The faults are real: SIGKILL of the operator, a killed and restarted
kube-apiserver and etcd, metrics endpoints that stop answering, answer slowly or answer garbage,
a second client writing the same object, and generated hostile specs.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client import ApiException

from ..operator.resource import GROUP, PLURAL, VERSION
from .cluster import LocalCluster
from .metrics_page import PodPages
from .operator_process import OperatorProcess
from .waiting import wait_for

CHILD_KINDS = ("Deployment", "Service", "PodDisruptionBudget")


def vllm_page(kv: float, running: int = 2) -> str:
    """A vLLM /metrics page with this KV-cache use."""
    return (f'vllm:kv_cache_usage_perc{{engine="0"}} {kv}\nvllm:num_requests_running{{engine="0"}} {running}\n'
            'vllm:num_requests_waiting{engine="0"} 0\nvllm:num_preemptions_total{engine="0"} 0\n')


def small_llmd(name: str, replicas: int | None = None, **autoscaling: Any) -> dict[str, Any]:
    """A 0.5B model on one L4: cheap to plan, one kwok pod per replica."""
    spec: dict[str, Any] = {
        "model": {"name": "Qwen/Qwen2.5-0.5B-Instruct"}, "serving": {"maxModelLen": 4096, "targetConcurrency": 1},
        "placement": {"gpuTypes": ["L4"]}, "vllm": {"port": 8000},
        "autoscaling": autoscaling or {"enabled": False}}
    if replicas is not None:
        spec["replicas"] = replicas
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LLMDeployment", "metadata": {"name": name}, "spec": spec}


def _get(api: Any, ns: str, name: str) -> dict[str, Any]:
    obj: Any = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    return dict(obj)


def _list(api: Any, ns: str) -> list[dict[str, Any]]:
    listed: Any = client.CustomObjectsApi(api).list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)
    return list(listed["items"])


def _condition(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == ctype), {})


def _requests(cluster: LocalCluster) -> list[str]:
    with cluster.http() as h:
        return [line for line in h.get("/metrics").text.splitlines()
                if line.startswith("apiserver_request_total{") and 'dry_run="All"' not in line]


def api_writes(cluster: LocalCluster, resources: str = "llmdeployments|deployments|services|poddisruptionbudgets"
               ) -> int:
    """Write requests the apiserver has served for these resources (its own counter)."""
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in _requests(cluster)
               if re.search(f'resource="({resources})"', line)
               and re.search(r'verb="(PATCH|PUT|POST|APPLY|DELETE)"', line))


def api_conflicts(cluster: LocalCluster, resource: str = "llmdeployments") -> int:
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in _requests(cluster)
               if f'resource="{resource}"' in line and 'code="409"' in line)


# ----- SIGKILL at random points -----------------------------------------------------------------------


@dataclass
class KillReport:
    kills: int
    objects: int
    actions: list[str]
    converge_s: float
    problems: list[str]  # duplicates, orphans, lost scales, status not matching the Deployment
    writes_after_restart: int  # by a clean restart once converged (≤ one per object expected)


def fleet_problems(api: Any, ns: str, names: list[str]) -> list[str]:
    """What is wrong with these LLMDeployments' children now (empty when consistent)."""
    apps, core, policy = client.AppsV1Api(api), client.CoreV1Api(api), client.PolicyV1Api(api)
    listed: dict[str, list[Any]] = {"Deployment": apps.list_namespaced_deployment(ns).items,
              "Service": core.list_namespaced_service(ns).items,
              "PodDisruptionBudget": policy.list_namespaced_pod_disruption_budget(ns).items}
    out = []
    for name in names:
        o = _get(api, ns, name)
        uid, spec, st = o["metadata"]["uid"], o["spec"], o.get("status") or {}
        for kind, items in listed.items():
            mine = [x for x in items if any(r.uid == uid for r in x.metadata.owner_references or [])]
            if len(mine) != 1:
                out.append(f"{name}: {len(mine)} {kind}s")
        if st.get("observedGeneration") != o["metadata"]["generation"]:
            out.append(f"{name}: observedGeneration {st.get('observedGeneration')} of {o['metadata']['generation']}")
        dep = next((d for d in listed["Deployment"] if d.metadata.name == name), None)
        if dep is None:
            continue
        want = spec.get("replicas")
        if want is not None and dep.spec.replicas != want:
            out.append(f"{name}: Deployment has {dep.spec.replicas} replicas, spec.replicas {want} (a lost scale)")
        if st.get("desiredReplicas") != dep.spec.replicas:
            out.append(f"{name}: status.desiredReplicas {st.get('desiredReplicas')}, Deployment {dep.spec.replicas}")
        args: list[str] = dep.spec.template.spec.containers[0].args
        length = args[args.index("--max-model-len") + 1]
        if length != str(spec["serving"]["maxModelLen"]):
            out.append(f"{name}: Deployment --max-model-len {length}, spec {spec['serving']['maxModelLen']}")
    owned = {o["metadata"]["uid"] for o in _list(api, ns)}
    for kind, items in listed.items():
        for x in items:
            refs = [r for r in x.metadata.owner_references or [] if r.kind == "LLMDeployment"]
            if refs and not any(r.uid in owned for r in refs):
                out.append(f"orphaned {kind} {x.metadata.name}")
    return out


def kill_points(cluster: LocalCluster, api: Any, ns: str, workdir: Path, kills: int = 20, objects: int = 4,
                seed: int = 14, max_delay_s: float = 2.5) -> KillReport:
    """SIGKILL the operator ``kills`` times, each a random moment after a create, a scale or a spec change
    (some land during start-up and resume, some mid-reconcile); then one clean start must converge."""
    rng = random.Random(seed)
    custom = client.CustomObjectsApi(api)
    names = [f"k{i}" for i in range(objects)]
    env = {"KVSCALE_AUTOSCALE_INTERVAL": "2"}
    op = OperatorProcess(kubeconfig=cluster.kubeconfig, extra_env=env, log_path=workdir / "operator.log")
    actions = []
    for k in range(kills):
        op.start()
        if k < objects:
            custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, small_llmd(names[k], replicas=1))
            actions.append(f"create {names[k]}")
        elif rng.random() < 0.5:
            name, replicas = rng.choice(names), rng.randint(0, 3)
            custom.patch_namespaced_custom_object_scale(GROUP, VERSION, ns, PLURAL, name,
                                                        {"spec": {"replicas": replicas}})
            actions.append(f"scale {name} to {replicas}")
        else:
            name, length = rng.choice(names), rng.choice([2048, 4096, 8192])
            custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name,
                                                  {"spec": {"serving": {"maxModelLen": length}}})
            actions.append(f"maxModelLen of {name} to {length}")
        time.sleep(rng.uniform(0, max_delay_s))
        assert op.proc is not None
        os.killpg(op.proc.pid, signal.SIGKILL)
        op.proc.wait(timeout=10)
    started = time.monotonic()
    op.start()
    problems: list[str] = []

    def converged() -> bool:
        nonlocal problems
        problems = fleet_problems(api, ns, names)
        return not problems

    with contextlib.suppress(AssertionError):  # reported, not raised: the report says what is wrong
        wait_for(converged, 120, "the fleet consistent after the kills", every=1)
    converge_s = time.monotonic() - started
    time.sleep(3)
    before = api_writes(cluster)
    op.stop()
    op.start()
    time.sleep(10)
    writes = api_writes(cluster) - before
    op.stop()
    return KillReport(kills, objects, actions, converge_s, problems, writes)


# ----- control-plane outage ----------------------------------------------------------------------------


@dataclass
class OutageReport:
    down_s: float  # apiserver and etcd down, until /readyz again
    same_process: bool  # the operator rode it out (no crash, no restart)
    replicas_before: int
    replicas_after: int
    catch_up_s: float  # after the apiserver was back: until an object created then was planned
    spec_change_applied: bool


def control_plane_outage(cluster: LocalCluster, api: Any, op: OperatorProcess, ns: str,
                         down_s: float = 5.0) -> OutageReport:
    custom, apps = client.CustomObjectsApi(api), client.AppsV1Api(api)
    selector = "kvscale.io/llmdeployment=steady"
    with PodPages(api, ns, selector, 8000, lambda: vllm_page(0.5)):
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, small_llmd(
            "steady", minReplicas=1, maxReplicas=3, scaleDownStabilizationSeconds=0))
        wait_for(lambda: _condition(_get(api, ns, "steady"), "MetricsAvailable").get("status") == "True", 90,
                 "the autoscaler reading the replica", not_yet=lambda e: isinstance(e, ApiException))
        before = int(_get(api, ns, "steady")["spec"].get("replicas") or 1)
        assert op.proc is not None
        pid = op.proc.pid
        outage = cluster.outage(down_s=down_s)
        back = time.monotonic()
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, small_llmd("after", replicas=1))
        wait_for(lambda: (_get(api, ns, "after").get("status") or {}).get("plan"), 120,
                 "an object created after the outage to be planned")
        catch_up = time.monotonic() - back
        custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "steady",
                                              {"spec": {"serving": {"maxModelLen": 8192}}})

        def rolled() -> bool:
            dep: Any = apps.read_namespaced_deployment("steady", ns)
            args: list[str] = dep.spec.template.spec.containers[0].args
            return args[args.index("--max-model-len") + 1] == "8192"

        try:
            applied = bool(wait_for(rolled, 60, "a spec change after the outage"))
        except AssertionError:
            applied = False
        after = int(_get(api, ns, "steady")["spec"].get("replicas") or 1)
    return OutageReport(outage, op.proc.poll() is None and op.proc.pid == pid, before, after, catch_up, applied)


# ----- metrics faults ----------------------------------------------------------------------------------


@dataclass
class MetricsFaultReport:
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)  # phase -> replicas seen, MetricsAvailable


#: for the first healthy read of two fresh replicas: created, scheduled, Ready, scraped (90 s was missed once
#: right after the control-plane outage scenario, with the session's operator catching up)
HEALTHY_READ_S = 180


def metrics_faults(api: Any, ns: str, interval_s: float, ticks: int = 3, closed_port: int = 9) -> MetricsFaultReport:
    """Replicas must hold while metrics are garbage, slow, or gone; an idle model whose activation query
    fails must not go to zero."""
    custom = client.CustomObjectsApi(api)
    mode = ["ok"]

    def page() -> str:
        if mode[0] == "garbage":
            return "<html>502 Bad Gateway</html>"
        if mode[0] == "slow":
            time.sleep(6)  # past the scrape timeout
        return vllm_page(0.6)

    dead = f"http://127.0.0.1:{closed_port}"
    report = MetricsFaultReport()
    with PodPages(api, ns, "kvscale.io/llmdeployment=faulty", 8000, page) as pages, \
            PodPages(api, ns, "kvscale.io/llmdeployment=guarded", 8000, lambda: vllm_page(0.0, 0)):
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, small_llmd(
            "faulty", replicas=2, minReplicas=1, maxReplicas=4, scaleDownStabilizationSeconds=300))
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, small_llmd(
            "blind", replicas=2, minReplicas=1, maxReplicas=4, scaleDownStabilizationSeconds=0,
            metrics={"type": "prometheus", "prometheusURL": dead}))
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, small_llmd(
            "guarded", replicas=1, minReplicas=0, maxReplicas=2, scaleDownStabilizationSeconds=0,
            metrics={"type": "pod", "prometheusURL": dead},
            activation={"query": "sum(gateway_requests_waiting)", "threshold": 0}))
        seen_message: list[str] = [""]

        def both_read() -> bool:
            seen_message[0] = _condition(_get(api, ns, "faulty"), "MetricsAvailable").get("message", "")
            return "read 2 replica" in seen_message[0]

        try:  # the suite runs last, on a control plane still collecting what earlier tests left
            wait_for(both_read, HEALTHY_READ_S, "both replicas of faulty read while healthy",
                     not_yet=lambda e: isinstance(e, ApiException))
        except AssertionError as exc:
            pods = client.CoreV1Api(api).list_namespaced_pod(ns, label_selector="kvscale.io/llmdeployment=faulty")
            found = [(d["metadata"]["name"], d.get("status", {}).get("phase"), d.get("status", {}).get("podIP"))
                     for d in (api.sanitize_for_serialization(p) for p in pods.items)]
            raise AssertionError(f"{exc}; MetricsAvailable said {seen_message[0]!r}; pages served on "
                                 f"{sorted(pages.servers)}; pods {found}") from exc
        # from here on a misread (garbage or silence taken for an idle fleet) would scale down at once
        custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "faulty", {
            "spec": {"autoscaling": {"scaleDownStabilizationSeconds": 0}}})
        time.sleep(2 * interval_s)
        assert int(_get(api, ns, "faulty")["spec"]["replicas"]) == 2, "faulty moved while its metrics were fine"
        for phase in ("garbage", "slow", "down"):
            mode[0] = phase
            pages.paused = phase == "down"
            seen: dict[str, set[int]] = {"faulty": set(), "blind": set(), "guarded": set()}
            available = set()
            deadline = time.monotonic() + ticks * interval_s + (6 if phase == "slow" else 2)
            while time.monotonic() < deadline:
                for name in seen:
                    seen[name].add(int(_get(api, ns, name)["spec"].get("replicas") or 0))
                available.add(_condition(_get(api, ns, "faulty"), "MetricsAvailable").get("status"))
                time.sleep(0.5)
            report.phases[phase] = {
                "faulty replicas": sorted(seen["faulty"]), "blind replicas": sorted(seen["blind"]),
                "guarded replicas": sorted(seen["guarded"]),
                "faulty MetricsAvailable": _condition(_get(api, ns, "faulty"), "MetricsAvailable").get("status"),
                "blind MetricsAvailable": _condition(_get(api, ns, "blind"), "MetricsAvailable").get("status")}
        pages.paused = False
    return report


# ----- a second writer ---------------------------------------------------------------------------------


@dataclass
class ConflictReport:
    foreign_writes: int
    operator_conflicts: int  # 409s the apiserver answered on llmdeployments while the loop ran
    converged: bool
    foreign_condition: str  # what the other client's condition says at the end
    own_conditions: list[str]
    problems: list[str]


def conflicting_writer(cluster: LocalCluster, api: Any, ns: str, seconds: float = 20.0) -> ConflictReport:
    """Another client rewrites the spec and its own status condition in a tight loop (as a well-behaved
    controller does: read, modify, write with the resourceVersion, retry on conflict)."""
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, small_llmd("contested", replicas=1))
    wait_for(lambda: (_get(api, ns, "contested").get("status") or {}).get("children"), 60, "contested planned",
             not_yet=lambda e: isinstance(e, ApiException))
    conflicts0 = api_conflicts(cluster)
    writes, stop = [0], threading.Event()
    last = [""]

    def loop() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "contested", {
                    "spec": {"serving": {"targetConcurrency": 1 + i % 3}}})
                obj = _get(api, ns, "contested")
                conds = [c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] != "ExternalProbe"]
                conds.append({"type": "ExternalProbe", "status": "True", "reason": "Probe", "message": f"write {i}",
                              "lastTransitionTime": "2026-01-01T00:00:00Z"})
                custom.patch_namespaced_custom_object_status(GROUP, VERSION, ns, PLURAL, "contested", {
                    "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                    "status": {"conditions": conds}})
                writes[0] += 2
                last[0] = f"write {i}"
            except ApiException as exc:
                if exc.status != 409:
                    raise

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    time.sleep(seconds)
    stop.set()
    t.join(timeout=10)
    conflicts = api_conflicts(cluster) - conflicts0
    problems: list[str] = []

    def settled() -> bool:
        nonlocal problems
        problems = fleet_problems(api, ns, ["contested"])
        return not problems

    try:
        ok = bool(wait_for(settled, 60, "contested consistent"))
    except AssertionError:
        ok = False
    obj = _get(api, ns, "contested")
    conds = (obj.get("status") or {}).get("conditions") or []
    return ConflictReport(writes[0], conflicts, ok, _condition(obj, "ExternalProbe").get("message", ""),
                          sorted(c["type"] for c in conds if c["type"] != "ExternalProbe"), problems)


# ----- hostile input -----------------------------------------------------------------------------------


@dataclass
class HostileReport:
    generated: int
    rejected: int  # refused at admission, naming the field
    rejected_unnamed: list[str]  # refusals whose message names no spec field
    reconciled: dict[str, int]  # condition reason -> objects
    unexplained: list[str]  # created, but no condition naming the problem
    tracebacks: int
    operator_restarts: int


def admission(api: Any, ns: str, body: dict[str, Any]) -> tuple[bool, str]:
    """(created, message) for one object."""
    try:
        client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
        return True, ""
    except ApiException as exc:
        try:
            return False, str(json.loads(exc.body or "{}").get("message", exc.body))
        except (TypeError, ValueError):
            return False, str(exc.body)


def settle_hostile(api: Any, ns: str, created: list[str], rejected: list[str], log_text: Callable[[], str],
                   op: OperatorProcess, timeout: float = 180.0) -> HostileReport:
    """Wait until every created object carries a Planned condition; tally what happened."""
    reasons: dict[str, int] = {}
    unexplained: list[str] = []

    def done() -> bool:
        reasons.clear()
        unexplained.clear()
        items = {o["metadata"]["name"]: o for o in _list(api, ns)}
        for name in created:
            cond = _condition(items.get(name, {}), "Planned")
            if not cond or not cond.get("message"):
                unexplained.append(name)
                continue
            reasons[cond["reason"]] = reasons.get(cond["reason"], 0) + 1
        return not unexplained

    with contextlib.suppress(AssertionError):
        wait_for(done, timeout, "every hostile object explained", every=2)
    unnamed = [m for m in rejected if "spec." not in m and "spec:" not in m]
    restarts = 0 if op.proc is not None and op.proc.poll() is None else 1
    return HostileReport(len(created) + len(rejected), len(rejected), unnamed[:10], dict(sorted(reasons.items())),
                         unexplained[:10], log_text().count("Traceback"), restarts)
