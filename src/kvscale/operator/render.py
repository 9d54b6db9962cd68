"""Plan -> the Kubernetes objects that run it: vLLM Deployment, Service, PodDisruptionBudget, optional model
cache claim and PodMonitor (pure)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..estimator.gpus import GIB, GPUCatalog, GPUType
from ..estimator.planner import Plan
from ..estimator.vllm_profiles import VLLM_RELEASE
from .engine_args import vllm_args
from .model_source import ModelSource, model_source
from .pod_resources import (
    PROBE_PERIOD_S,
    StartupBudget,
    checkpoint_bytes,
    host_resources,
    merged_resources,
    shm_bytes,
    startup_budget,
)
from .resource import GROUP, KIND, VERSION, LLMDeploymentSpec
from .rollout import rollout_strategy

INSTANCE_LABEL = "kvscale.io/llmdeployment"
MANAGED_BY = {"app.kubernetes.io/managed-by": "kvscale"}
#: kube-proxy and ingress controllers drop a terminating pod from their endpoints within seconds: the
#: pod keeps serving that long before vLLM is told to stop, so no request is sent to a closed port
ENDPOINT_LAG_S = 10
EXIT_MARGIN_S = 15  # after the drain: vLLM's engine and workers shut down
CACHE_HEADROOM = 1.25  # a created model cache: the checkpoint plus room for a revision beside it


#: the container that runs vLLM in every replica pod
VLLM_CONTAINER = "vllm"
#: on each replica pod: the plan it was rendered from
PLAN_HASH_ANNOTATION = "kvscale.io/plan-hash"
#: a replica spanning nodes: the LeaderWorkerSet API (sigs.k8s.io/lws) its groups run as
LWS_GROUP = "leaderworkerset.x-k8s.io"
LWS_KIND = "LeaderWorkerSet"
LWS_PLURAL = "leaderworkersets"
LWS_GROUP_KEY = "leaderworkerset.sigs.k8s.io/group-key"  # the same on every pod of one group
LWS_WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"  # "0" on the leader
LWS_EXCLUSIVE_TOPOLOGY = "leaderworkerset.sigs.k8s.io/exclusive-topology"  # one group per topology domain
#: on the pods of a group: which serves the API (the Service and the autoscaler read leaders only)
ROLE_LABEL = "kvscale.io/role"
LEADER, WORKER = "leader", "worker"


def selector_labels(name: str) -> dict[str, str]:
    return {INSTANCE_LABEL: name}


def selector_string(name: str) -> str:
    return f"{INSTANCE_LABEL}={name}"


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": name, "uid": uid,
            "controller": True, "blockOwnerDeletion": True}


def desired_replicas(spec: LLMDeploymentSpec, plan: Plan) -> int:
    """Replicas the Deployment should have before the autoscaler has spoken."""
    if spec.replicas is not None:
        return spec.replicas
    if spec.autoscaling.enabled:
        return max(1, spec.autoscaling.min_replicas)
    return plan.replicas


def _affinity(user: dict[str, Any], gpu_term: dict[str, Any]) -> dict[str, Any]:
    """The user's affinity with every required node term also asking for the planned GPU type."""
    out = {k: v for k, v in user.items() if k != "nodeAffinity"}
    node = dict(user.get("nodeAffinity") or {})
    required = node.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    terms = required.get("nodeSelectorTerms") or [{}]
    node["requiredDuringSchedulingIgnoredDuringExecution"] = {"nodeSelectorTerms": [
        {**t, "matchExpressions": [*(t.get("matchExpressions") or []), gpu_term]} for t in terms]}
    out["nodeAffinity"] = node
    return out


def vllm_image(spec: LLMDeploymentSpec, gpu: GPUType, catalog: GPUCatalog) -> str:
    return spec.vllm.image or catalog.image(gpu, VLLM_RELEASE)


def cache_size(spec: LLMDeploymentSpec, size_bytes: int) -> str:
    given = spec.model.cache.size if spec.model.cache else None
    return given or f"{math.ceil(size_bytes * CACHE_HEADROOM / GIB)}Gi"


def workload_kind(plan: Mapping[str, Any]) -> str:
    """What runs a recorded plan (status.plan): a Deployment, or a LeaderWorkerSet for one spanning nodes."""
    return LWS_KIND if int(plan.get("nodesPerReplica") or 1) > 1 else "Deployment"


WORKLOAD_KINDS = ("Deployment", LWS_KIND)
#: a LeaderWorkerSet makes a headless Service of its own name for its pods' DNS (the leader's address): it
#: cannot share its name with the LLMDeployment's Service, which must keep the name clients use
LWS_SUFFIX = "-lws"


def workload_name(name: str, kind: str) -> str:
    return f"{name}{LWS_SUFFIX}" if kind == LWS_KIND else name


def serving_selector(name: str, plan: Plan) -> dict[str, str]:
    """The pods that serve HTTP: every replica pod, or the leader of each group of a multi-node plan."""
    return {**selector_labels(name), ROLE_LABEL: LEADER} if plan.multi_node else selector_labels(name)


@dataclass(frozen=True)
class _Sized:
    """What every pod of a replica is sized from, worked out once per render."""

    source: ModelSource
    checkpoint_bytes: int
    budget: StartupBudget


def _pod_template(name: str, spec: LLMDeploymentSpec, plan: Plan, gpu: GPUType, catalog: GPUCatalog,
                  plan_hash: str, labels: dict[str, str], sized: _Sized,
                  role: str | None = None) -> dict[str, Any]:
    """One replica pod, or (``role``) the leader or a worker of a multi-node replica's group: each of
    those runs on its own node with that node's GPUs and its pipeline stage."""
    source, size, budget = sized.source, sized.checkpoint_bytes, sized.budget
    per_pod = plan if role is None else plan.model_copy(update={"gpus_per_replica": plan.tensor_parallel_size})
    resources = merged_resources(host_resources(per_pod, source, size, size // plan.nodes_per_replica),
                                 spec.vllm.resources)
    gpus = str(per_pod.gpus_per_replica)
    resources["limits"][gpu.resource_name] = gpus
    resources["requests"][gpu.resource_name] = gpus
    gpu_term = {"key": gpu.product_label_key, "operator": "In", "values": list(gpu.product_labels)}
    tolerations = [{"key": gpu.resource_name, "operator": "Exists", "effect": "NoSchedule"},
                   *spec.placement.tolerations]
    port = spec.vllm.port
    probe = {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": PROBE_PERIOD_S, "timeoutSeconds": 5}
    serves = role in (None, LEADER)
    container: dict[str, Any] = {
        "name": VLLM_CONTAINER, "image": vllm_image(spec, gpu, catalog),
        "command": ["vllm", "serve"],
        "args": vllm_args(spec, plan, source, leader=serves),
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}] if serves else [],
        "env": [*source.env, *spec.vllm.env],
        "resources": resources,
    }
    if serves:
        container |= {
            "startupProbe": {**probe, "failureThreshold": budget.failure_threshold},
            "readinessProbe": {**probe, "failureThreshold": 3},
            # a busy server answers /health late; only one silent for a minute is restarted
            "livenessProbe": {**probe, "timeoutSeconds": 10, "failureThreshold": 6},
        }
    else:  # a headless worker serves no HTTP: its health is the leader's (the group restarts as one)
        del container["ports"]
    container |= {
        "lifecycle": {"preStop": {"sleep": {"seconds": ENDPOINT_LAG_S}}},
        # a failed start leaves vLLM's last log lines in the pod's status (kubectl describe shows them)
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}, *source.mounts, *spec.vllm.volume_mounts],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                            **({"runAsNonRoot": True, "runAsUser": spec.vllm.run_as_user}
                               if spec.vllm.run_as_user else {})},
    }
    if source.env_from:
        container["envFrom"] = source.env_from
    pod_spec: dict[str, Any] = {
        "affinity": _affinity(spec.placement.affinity, gpu_term),
        "nodeSelector": dict(spec.placement.node_selector),
        "tolerations": tolerations,
        "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{shm_bytes(per_pod) // GIB}Gi"}},
                    *source.volumes, *spec.vllm.volumes],
        # preStop wait, then vLLM drains its running requests (--shutdown-timeout), then a margin to exit
        "terminationGracePeriodSeconds": ENDPOINT_LAG_S + spec.vllm.drain_seconds + EXIT_MARGIN_S,
        "enableServiceLinks": False,  # a Service named vllm would inject VLLM_PORT=tcp://..., which vLLM reads
        "automountServiceAccountToken": False,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
    }
    if role is not None:
        # the pods of one group on different nodes: each is a pipeline stage with its node's GPUs
        pod_spec["affinity"]["podAntiAffinity"] = {
            **(pod_spec["affinity"].get("podAntiAffinity") or {}),
            "requiredDuringSchedulingIgnoredDuringExecution": [
                *((pod_spec["affinity"].get("podAntiAffinity") or {})
                  .get("requiredDuringSchedulingIgnoredDuringExecution") or []),
                {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": selector_labels(name)},
                 "matchLabelKeys": [LWS_GROUP_KEY]}]}
    elif spec.placement.spread_across_nodes:
        pod_spec["topologySpreadConstraints"] = [{
            "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector_labels(name)}, "matchLabelKeys": ["pod-template-hash"]}]
    for key, value in (("priorityClassName", spec.placement.priority_class_name),
                       ("runtimeClassName", spec.placement.runtime_class_name),
                       ("serviceAccountName", spec.vllm.service_account_name)):
        if value:
            pod_spec[key] = value
    if spec.vllm.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in spec.vllm.image_pull_secrets]
    pod_labels = labels if role is None else {**labels, ROLE_LABEL: role}
    annotations = {PLAN_HASH_ANNOTATION: plan_hash}
    if serves:
        annotations |= {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
                        "prometheus.io/path": "/metrics"}
    return {"metadata": {"labels": pod_labels, "annotations": annotations}, "spec": pod_spec}


def _leader_worker_set(name: str, meta: dict[str, Any], spec: LLMDeploymentSpec, plan: Plan, gpu: GPUType,
                       catalog: GPUCatalog, plan_hash: str, replicas: int, labels: dict[str, str],
                       sized: _Sized) -> dict[str, Any]:
    """A replica spanning nodes as a LeaderWorkerSet group: one pod per node, the leader serving the API.

    A failed pod restarts its whole group (vLLM's process group cannot take a member back); a rollout
    replaces one group at a time and adds none beside it (a group holds whole nodes)."""
    annotations = {"kvscale.io/rollout": "one group at a time, none added beside it: a group holds "
                                         f"{plan.nodes_per_replica} whole nodes"}
    if spec.placement.group_topology_key:
        annotations[LWS_EXCLUSIVE_TOPOLOGY] = spec.placement.group_topology_key
    return {
        "apiVersion": f"{LWS_GROUP}/v1", "kind": LWS_KIND,
        "metadata": {"name": workload_name(name, LWS_KIND), **meta, "annotations": annotations},
        "spec": {
            "replicas": replicas,
            "startupPolicy": "LeaderCreated",
            "rolloutStrategy": {"type": "RollingUpdate",
                                "rollingUpdateConfiguration": {"maxUnavailable": 1, "maxSurge": 0}},
            "leaderWorkerTemplate": {
                "size": plan.nodes_per_replica,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": _pod_template(name, spec, plan, gpu, catalog, plan_hash, labels, sized, LEADER),
                "workerTemplate": _pod_template(name, spec, plan, gpu, catalog, plan_hash, labels, sized, WORKER),
            },
        },
    }


def render(name: str, namespace: str, uid: str, spec: LLMDeploymentSpec, plan: Plan, catalog: GPUCatalog,
           plan_hash: str, replicas: int, free_per_node: list[int] | None = None) -> list[dict[str, Any]]:
    gpu = catalog.get(plan.gpu)
    labels = {**selector_labels(name), "app.kubernetes.io/name": "vllm", "app.kubernetes.io/instance": name,
              **MANAGED_BY}
    owner = [owner_reference(name, uid)]
    meta = {"namespace": namespace, "labels": labels, "ownerReferences": owner}
    source = model_source(name, spec)
    size = checkpoint_bytes(plan, spec.model.size_gib)
    budget = startup_budget(source, size, spec.vllm.startup_seconds)
    sized = _Sized(source, size, budget)
    port = spec.vllm.port
    annotations = {"kvscale.io/startup-budget": f"{budget.seconds}s: {budget.why}"}
    if plan.multi_node:
        workload = _leader_worker_set(name, meta, spec, plan, gpu, catalog, plan_hash, replicas, labels, sized)
        workload["metadata"]["annotations"] = {**annotations, **workload["metadata"].get("annotations", {})}
    else:
        strategy, why_strategy = rollout_strategy(spec.vllm.rollout, plan.gpus_per_replica, free_per_node)
        workload = {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, **meta, "annotations": {"kvscale.io/rollout": why_strategy, **annotations}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": selector_labels(name)},
                "strategy": strategy,
                "progressDeadlineSeconds": budget.progress_deadline_s,
                "template": _pod_template(name, spec, plan, gpu, catalog, plan_hash, labels, sized),
            },
        }
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "ownerReferences": owner},
        "spec": {"selector": serving_selector(name, plan),
                 "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}]},
    }
    pdb = {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": name, **meta},
        "spec": {"maxUnavailable": spec.vllm.max_unavailable, "selector": {"matchLabels": selector_labels(name)}},
    }
    objects = [workload, service, pdb]
    if source.cache_claim and spec.model.cache:
        claim: dict[str, Any] = {
            "accessModes": [spec.model.cache.access_mode.value],
            "resources": {"requests": {"storage": cache_size(spec, size)}}}
        if spec.model.cache.storage_class_name:
            claim["storageClassName"] = spec.model.cache.storage_class_name
        objects.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                        "metadata": {"name": source.cache_claim, **meta}, "spec": claim})
    if spec.vllm.pod_monitor:
        objects.append({
            "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
            "metadata": {"name": name, "namespace": namespace, "labels": labels, "ownerReferences": owner},
            "spec": {"selector": {"matchLabels": serving_selector(name, plan)},
                     "podMetricsEndpoints": [{"port": "http", "path": "/metrics"}]},
        })
    return objects
