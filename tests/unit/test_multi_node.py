"""Replicas larger than a node: rendered as a LeaderWorkerSet, planned only where the cluster runs one,
kept on a scale, and replaced by the other workload kind when the plan moves between one node and several."""

from __future__ import annotations

from typing import Any

from kvscale.operator.discovery import gpu_options
from kvscale.operator.engine_args import conflicting_args
from kvscale.operator.model_source import model_source
from kvscale.operator.planning import NO_LWS
from kvscale.operator.reconcile import child_key, reconcile
from kvscale.operator.resource import LLMDeploymentSpec
from kvscale.testing.fleet import NodePool, fleet_manifests

from .test_operator_pure import CAT, T0, applied, at, ready

H100_NODES = gpu_options(ready(fleet_manifests((NodePool(gpu="H100-80GB", nodes=4, gpus_per_node=8),))), CAT)


def r1(**placement: Any) -> dict[str, Any]:
    return {"model": {"name": "deepseek-ai/DeepSeek-R1"},
            "serving": {"maxModelLen": 16384, "targetConcurrency": 8}, "placement": placement}


def small() -> dict[str, Any]:
    return {"model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
            "serving": {"maxModelLen": 8192, "targetConcurrency": 4}}


def _args(container: dict[str, Any]) -> dict[str, str]:
    args = container["args"]
    return {a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--") and not args[i + 1].startswith("--")}


def test_deepseek_r1_on_8xh100_nodes_renders_a_group_of_two_with_the_leader_behind_the_service() -> None:
    rec = reconcile("r1", "ns", "u", 1, r1(groupTopologyKey="example.com/block"), {}, H100_NODES, CAT, T0,
                    multi_node=True)
    plan = rec.status["plan"]
    assert (plan["tensorParallelSize"], plan["pipelineParallelSize"], plan["nodesPerReplica"]) == (8, 2, 2)
    assert "between 2 nodes" in plan["interconnect"]
    lws, svc, pdb = rec.apply[:3]
    assert (lws["apiVersion"], lws["kind"]) == ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet")
    # not the Service's name: LeaderWorkerSet makes a headless Service of its own name for the leader's address
    assert lws["metadata"]["name"] == "r1-lws" and svc["metadata"]["name"] == "r1"
    group = lws["spec"]["leaderWorkerTemplate"]
    assert group["size"] == 2 and group["restartPolicy"] == "RecreateGroupOnPodRestart"
    assert lws["metadata"]["annotations"]["leaderworkerset.sigs.k8s.io/exclusive-topology"] == "example.com/block"
    assert lws["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"] == {"maxUnavailable": 1, "maxSurge": 0}
    leader, worker = (group[t]["spec"]["containers"][0] for t in ("leaderTemplate", "workerTemplate"))
    for c in (leader, worker):  # each pod: one node's GPUs, one stage
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
        got = _args(c)
        assert (got["--tensor-parallel-size"], got["--pipeline-parallel-size"], got["--nnodes"]) == ("8", "2", "2")
        assert got["--master-addr"] == "$(LWS_LEADER_ADDRESS)" and got["--distributed-executor-backend"] == "mp"
    assert _args(leader)["--node-rank"] == "0" and "--headless" not in leader["args"]
    assert _args(worker)["--node-rank"] == "$(LWS_WORKER_INDEX)" and worker["args"][-1] == "--headless"
    assert "readinessProbe" in leader and "readinessProbe" not in worker and "ports" not in worker
    hashes = {group[t]["metadata"]["annotations"]["kvscale.io/plan-hash"] for t in ("leaderTemplate", "workerTemplate")}
    assert hashes == {rec.status["planHash"]}
    anti = group["workerTemplate"]["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"
    assert anti[0]["matchLabelKeys"] == ["leaderworkerset.sigs.k8s.io/group-key"]
    assert svc["spec"]["selector"] == {"kvscale.io/llmdeployment": "r1", "kvscale.io/role": "leader"}
    assert pdb["kind"] == "PodDisruptionBudget"


def _gi(q: str) -> int:
    assert q.endswith("Gi")
    return int(q[:-2])


def test_each_pod_of_a_group_downloads_the_whole_checkpoint_but_loads_only_its_stage() -> None:
    """vLLM fetches every weight file on every rank whatever its stage: the disk holds the checkpoint,
    host memory only the stage it loads."""
    rec = reconcile("r1", "ns", "u", 1, r1(), {}, H100_NODES, CAT, T0, multi_node=True)
    plan = rec.status["plan"]
    group = rec.apply[0]["spec"]["leaderWorkerTemplate"]
    checkpoint_gib = plan["weightsGiB"] * plan["tensorParallelSize"] * plan["pipelineParallelSize"]
    for t in ("leaderTemplate", "workerTemplate"):
        requests = group[t]["spec"]["containers"][0]["resources"]["requests"]
        assert _gi(requests["ephemeral-storage"]) >= checkpoint_gib  # the whole checkpoint lands on each pod
        assert _gi(requests["memory"]) < checkpoint_gib  # but only half of it passes through its memory


def test_without_the_leaderworkerset_api_a_model_larger_than_a_node_is_refused_with_what_it_needs() -> None:
    rec = reconcile("r1", "ns", "u", 1, r1(), {}, H100_NODES, CAT, T0, multi_node=False)
    assert not rec.apply
    planned = rec.conditions[0]
    assert planned[:3] == ("Planned", False, "InsufficientGPUMemory")
    assert "needs 2 nodes of 8x H100-80GB (TP8xPP2, fp8)" in planned[3]
    assert any(NO_LWS in r for r in rec.status["rejected"])


def test_a_scale_of_a_multi_node_plan_keeps_its_layout_and_pod_templates() -> None:
    raw = {**r1(), "replicas": 1}
    first = reconcile("r1", "ns", "u", 1, raw, {}, H100_NODES, CAT, T0, multi_node=True)
    status = applied(first)
    assert set(status["children"]) >= {"LeaderWorkerSet/r1-lws", "Service/r1"}
    # two of the four nodes busy: the plan is kept all the same (a scale never re-plans)
    rec = reconcile("r1", "ns", "u", 2, {**raw, "replicas": 2}, status, H100_NODES, CAT, at(5),
                    children=dict(status["children"]), multi_node=True)
    assert not rec.plan_changed and rec.status["planHash"] == status["planHash"] and not rec.delete
    lws = rec.apply[0]
    assert lws["spec"]["replicas"] == 2
    assert lws["spec"]["leaderWorkerTemplate"] == first.apply[0]["spec"]["leaderWorkerTemplate"]


def test_moving_between_one_node_and_several_replaces_the_workload_kind() -> None:
    status = applied(reconcile("m", "ns", "u", 1, small(), {}, H100_NODES, CAT, T0, multi_node=True))
    assert "Deployment/m" in status["children"]
    to_multi = reconcile("m", "ns", "u", 2, r1(), status, H100_NODES, CAT, at(5),
                         children=dict(status["children"]), multi_node=True)
    assert to_multi.plan_changed
    assert child_key(to_multi.apply[0]) == "LeaderWorkerSet/m-lws"
    assert to_multi.delete == ["Deployment/m"]
    status = applied(to_multi, status, gen=2)
    back = reconcile("m", "ns", "u", 3, small(), status, H100_NODES, CAT, at(10),
                     children=dict(status["children"]), multi_node=True)
    assert child_key(back.apply[0]) == "Deployment/m" and back.delete == ["LeaderWorkerSet/m-lws"]
    assert "pipelineParallelSize" in back.status["plan"] and back.status["plan"]["pipelineParallelSize"] is None


def test_the_multi_node_arguments_are_the_plans_not_extra_args() -> None:
    spec = LLMDeploymentSpec.model_validate({**small(), "vllm": {"extraArgs": [
        "--nnodes", "2", "--headless", "--distributed-executor-backend", "ray"]}})
    refused = conflicting_args(spec.vllm.extra_args, model_source("m", spec))
    assert any(m.startswith("--nnodes is planned") for m in refused)
    assert any(m.startswith("--headless is planned") for m in refused)
    # a Ray backend would wait for a Ray cluster the group never starts
    assert any(m.startswith("--distributed-executor-backend is planned") for m in refused)


def _group_pod(name: str, group: str, role: str, ready: bool = True, waiting: str | None = None,
               unschedulable: bool = False) -> dict[str, Any]:
    labels = {"kvscale.io/llmdeployment": "r1", "kvscale.io/role": role,
              "leaderworkerset.sigs.k8s.io/group-key": group}
    if unschedulable:
        return {"metadata": {"name": name, "namespace": "ns", "labels": labels}, "status": {
            "phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                                                "reason": "Unschedulable", "message": "0/4 nodes: 4 Insufficient"}]}}
    state = {"waiting": {"reason": waiting}} if waiting else {"running": {}}
    return {"metadata": {"name": name, "namespace": "ns", "labels": labels}, "status": {
        "phase": "Running", "podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": str(ready)}],
        "containerStatuses": [{"name": "vllm", "ready": ready, "state": state, "restartCount": 1 if waiting else 0,
                               **({"lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}
                                  if waiting else {})}]}}


def test_a_group_counts_as_its_worst_pod_and_only_its_leader_is_scraped() -> None:
    from kvscale.operator.autoscale import classify_pods, pod_failures, replica_groups

    pods = [
        _group_pod("ok-0", "ok", "leader"), _group_pod("ok-0-1", "ok", "worker"),
        # the leader waits for its stage (not Ready) while the worker has no node: the group is unschedulable
        _group_pod("stuck-0", "stuck", "leader", ready=False), _group_pod("stuck-0-1", "stuck", "worker",
                                                                          unschedulable=True),
        # a worker killed for memory: the group has failed, though its leader's process still runs
        _group_pod("oom-0", "oom", "leader", ready=False), _group_pod("oom-0-1", "oom", "worker", ready=False,
                                                                      waiting="CrashLoopBackOff"),
    ]
    view = classify_pods(replica_groups(pods), 8000)
    assert [t.pod for t in view.ready] == ["ok-0"]  # a Ready worker is not a replica of its own
    assert view.unready == [] and view.pending == 0
    assert (view.unschedulable, view.unschedulable_reason) == (1, "0/4 nodes: 4 Insufficient")
    assert view.failed == 1
    assert list(pod_failures(pods)) == ["pod oom-0-1 container vllm: OOMKilled"]  # named by the pod that failed


def test_a_leader_that_failed_to_start_is_recorded_though_its_worker_runs() -> None:
    from kvscale.operator.reconcile import spec_hash
    from kvscale.operator.startup_failures import StartupCause, StartupFailure
    from kvscale.operator.startup_replan import new_failure

    rec = reconcile("r1", "ns", "u", 1, r1(), {}, H100_NODES, CAT, T0, multi_node=True)
    status = applied(rec)
    leader, worker = _group_pod("r1-lws-0", "g0", "leader", ready=False, waiting="CrashLoopBackOff"), \
        _group_pod("r1-lws-0-1", "g0", "worker")  # a worker has no readiness probe: Ready once running
    for p in (leader, worker):
        p["metadata"]["annotations"] = {"kvscale.io/plan-hash": status["planHash"]}
    cause = StartupFailure(StartupCause.KV_TOO_SMALL, "ValueError: To serve at least one request ...", 16384, 1.0,
                           0.5, 1000)
    record = new_failure([leader, worker], {"r1-lws-0": cause}, status, spec_hash(r1()), at(200))
    assert record is not None and record["planHash"] == status["planHash"]
    # a group whose leader has served: its worker's failure is at run time, not the plan's
    broken = _group_pod("r1-lws-0-1", "g0", "worker", ready=False, waiting="CrashLoopBackOff")
    broken["metadata"]["annotations"] = worker["metadata"]["annotations"]
    assert new_failure([leader, broken], {"r1-lws-0-1": cause}, status, spec_hash(r1()), at(200),
                       served={"r1-lws-0"}) is None
