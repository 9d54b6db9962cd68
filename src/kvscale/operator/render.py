"""Plan -> the Kubernetes objects that run it: vLLM Deployment, Service, optional PodMonitor (pure)."""

from __future__ import annotations

from typing import Any

from ..estimator.gpus import GPUCatalog
from ..estimator.planner import Plan
from .resource import GROUP, KIND, VERSION, LLMDeploymentSpec

INSTANCE_LABEL = "kvscale.io/llmdeployment"
MANAGED_BY = {"app.kubernetes.io/managed-by": "kvscale"}
SHM_SIZE = "16Gi"


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


def vllm_args(spec: LLMDeploymentSpec, plan: Plan) -> list[str]:
    args = [
        "--model", spec.model.uri or spec.model.name,
        "--served-model-name", spec.model.name,
        "--port", str(spec.vllm.port),
        "--tensor-parallel-size", str(plan.tensor_parallel_size),
        "--max-model-len", str(spec.serving.max_model_len),
        "--gpu-memory-utilization", f"{spec.serving.gpu_memory_utilization:g}",
        "--kv-cache-dtype", spec.serving.kv_cache_dtype.value,
    ]
    if plan.quantization_flag:
        args += ["--quantization", plan.quantization_flag]
    if spec.model.revision:
        args += ["--revision", spec.model.revision]
    if spec.serving.max_num_batched_tokens:
        args += ["--max-num-batched-tokens", str(spec.serving.max_num_batched_tokens)]
    return args + list(spec.vllm.extra_args)


def render(name: str, namespace: str, uid: str, spec: LLMDeploymentSpec, plan: Plan, catalog: GPUCatalog,
           plan_hash: str, replicas: int) -> list[dict[str, Any]]:
    gpu = catalog.get(plan.gpu)
    labels = {**selector_labels(name), "app.kubernetes.io/name": "vllm", "app.kubernetes.io/instance": name,
              **MANAGED_BY}
    owner = [owner_reference(name, uid)]
    gpus = str(plan.tensor_parallel_size)
    resources = {k: dict(v) for k, v in spec.vllm.resources.items() if isinstance(v, dict)}
    resources.setdefault("limits", {})[gpu.resource_name] = gpus
    resources.setdefault("requests", {})[gpu.resource_name] = gpus
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": gpu.product_label_key, "operator": "In", "values": list(gpu.product_labels)}]},
    ]}}}
    tolerations = [{"key": gpu.resource_name, "operator": "Exists", "effect": "NoSchedule"},
                   *spec.placement.tolerations]
    port = spec.vllm.port
    probe = {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10, "timeoutSeconds": 5}
    container = {
        "name": "vllm", "image": spec.vllm.image,
        "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
        "args": vllm_args(spec, plan),
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "env": list(spec.vllm.env),
        "resources": resources,
        "startupProbe": {**probe, "failureThreshold": 180},  # weight download + load: up to 30 min
        "readinessProbe": {**probe, "failureThreshold": 3},
        "livenessProbe": {**probe, "failureThreshold": 6},
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "ownerReferences": owner},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(name)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": labels, "annotations": {
                    "kvscale.io/plan-hash": plan_hash, "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}},
                "spec": {
                    "affinity": affinity,
                    "nodeSelector": dict(spec.placement.node_selector),
                    "tolerations": tolerations,
                    "containers": [container],
                    "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}}],
                    "terminationGracePeriodSeconds": 60,
                },
            },
        },
    }
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "ownerReferences": owner},
        "spec": {"selector": selector_labels(name),
                 "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}]},
    }
    objects = [deployment, service]
    if spec.vllm.pod_monitor:
        objects.append({
            "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
            "metadata": {"name": name, "namespace": namespace, "labels": labels, "ownerReferences": owner},
            "spec": {"selector": {"matchLabels": selector_labels(name)},
                     "podMetricsEndpoints": [{"port": "http", "path": "/metrics"}]},
        })
    return objects
