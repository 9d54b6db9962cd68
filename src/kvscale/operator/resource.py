"""The ``LLMDeployment`` resource (kvscale.io/v1alpha1), defined once; ``crds/`` is generated from it.

Field descriptions become ``kubectl explain`` text; cross-field rules live in ``CEL_RULES``
and are enforced by the API server at admission.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..estimator.kv_cache import KVCacheDtype
from ..estimator.memory import DEFAULT_BLOCK_SIZE, DEFAULT_GPU_MEMORY_UTILIZATION
from ..estimator.performance import DEFAULT_INTER_NODE_GBITS
from ..estimator.planner import DEFAULT_MAX_NODES_PER_REPLICA, Preference
from ..estimator.quantization import Quantization

GROUP = "kvscale.io"
VERSION = "v1alpha1"
KIND = "LLMDeployment"
PLURAL = "llmdeployments"
SINGULAR = "llmdeployment"
SHORT_NAMES = ["llmd"]


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid", use_enum_values=False)


class MetricsSourceType(StrEnum):
    POD = "pod"
    PROMETHEUS = "prometheus"


class SecretKey(_Model):
    name: str = Field(min_length=1, max_length=253, description="Secret name (same namespace).")
    key: str = Field(default="token", min_length=1, max_length=253, description="Key in the Secret.")


class CacheAccessMode(StrEnum):
    READ_WRITE_MANY = "ReadWriteMany"
    READ_ONLY_MANY = "ReadOnlyMany"


class ModelCache(_Model):
    """A volume every replica shares as its Hugging Face cache, so restarts and new replicas skip the download."""

    claim_name: str | None = Field(default=None, alias="claimName", max_length=253, description=(
        "PersistentVolumeClaim to mount as the cache. Unset with create: kvscale creates '<name>-model-cache'."))
    create: bool = Field(default=False, description=(
        "Create the claim (owned by this LLMDeployment, so it goes with it)."))
    storage_class_name: str | None = Field(default=None, alias="storageClassName", max_length=253, description=(
        "Storage class of a created claim (empty: the cluster default)."))
    size: str | None = Field(default=None, max_length=32, pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$",
                             description="Size of a created claim. Default: the checkpoint size plus 25 percent.")
    access_mode: CacheAccessMode = Field(default=CacheAccessMode.READ_WRITE_MANY, alias="accessMode", description=(
        "ReadWriteMany: replicas download into it; ReadOnlyMany: it is filled already and vLLM runs offline."))


class ModelRef(_Model):
    name: str = Field(min_length=1, max_length=256, description=(
        "Model id: a kvscale catalog id or Hugging Face id (e.g. meta-llama/Llama-3.1-70B-Instruct). "
        "Sizes the plan."))
    uri: str | None = Field(default=None, max_length=1024, description=(
        "Where vLLM loads weights from (default: name). A Hugging Face id is downloaded by vLLM (into cache "
        "when set); a path is read from the image or a mounted volume; pvc://<claim>/<path> mounts that claim "
        "read-only; s3://bucket/path and gs://bucket/path are streamed by vLLM's Run:ai model streamer "
        "(--load-format runai_streamer) with credentials from credentialsSecret."))
    revision: str | None = Field(default=None, max_length=128, description="Model revision (branch, tag or commit).")
    architecture: dict[str, Any] | None = Field(default=None, description=(
        "config.json fields overriding or replacing the catalog architecture (for models kvscale does not know "
        "offline: give at least num_hidden_layers, hidden_size, num_attention_heads, vocab_size)."),
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    hf_token_secret: SecretKey | None = Field(default=None, alias="hfTokenSecret", description=(
        "Secret key holding a Hugging Face token, given to vLLM as HF_TOKEN (a secretKeyRef, never inlined)."))
    credentials_secret: str | None = Field(default=None, alias="credentialsSecret", max_length=253, description=(
        "Secret whose keys become the vLLM container's environment, for object storage (AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, GOOGLE_APPLICATION_CREDENTIALS, ...)."))
    cache: ModelCache | None = Field(default=None, description=(
        "Shared Hugging Face cache volume (for Hugging Face ids)."))
    size_gib: float | None = Field(default=None, alias="sizeGiB", gt=0, le=100_000, description=(
        "Checkpoint size on disk. Default: the estimated weights. Sizes the start-up budget and a created cache."))


class Serving(_Model):
    max_model_len: int = Field(alias="maxModelLen", ge=16, le=10_000_000, description=(
        "Longest request (prompt + output) in tokens; vLLM --max-model-len."))
    target_concurrency: int = Field(default=8, alias="targetConcurrency", ge=1, le=100_000, description=(
        "Sequences of maxModelLen each replica must hold in KV cache at once; sizes GPU count per replica."))
    kv_cache_dtype: KVCacheDtype = Field(default=KVCacheDtype.AUTO, alias="kvCacheDtype", description=(
        "KV cache dtype; fp8 halves KV memory."))
    gpu_memory_utilization: float = Field(
        default=DEFAULT_GPU_MEMORY_UTILIZATION, alias="gpuMemoryUtilization", gt=0, le=1, description=(
        "Fraction of each GPU's memory vLLM may use (weights + activations + KV cache); default: vLLM 0.32's."))
    max_num_batched_tokens: int | None = Field(default=None, alias="maxNumBatchedTokens", ge=1, description=(
        "Token budget per engine step; larger values raise the activation peak. Default: vLLM's for the GPU."))
    max_num_seqs: int | None = Field(default=None, alias="maxNumSeqs", ge=1, le=65_536, description=(
        "Most sequences per engine step (vLLM --max-num-seqs). Default: vLLM's for the GPU."))
    block_size: int = Field(default=DEFAULT_BLOCK_SIZE, alias="blockSize", ge=1, le=1024, description=(
        "KV cache block size in tokens (vLLM --block-size; 16 is vLLM's CUDA default, its CPU backend uses 128)."))
    enable_prefix_caching: bool = Field(default=True, alias="enablePrefixCaching", description=(
        "Automatic prefix caching (vLLM's default; hybrid models pin extra state blocks with it)."))
    slo: ServingSLO | None = Field(default=None, description=(
        "Latency targets at a load: the plan is sized for this load and must meet them (targetConcurrency is "
        "then not used)."))


class ServingSLO(_Model):
    """Latency targets and the load they hold at: the plan is the cheapest layout and replica count whose
    predicted latencies meet them (kvscale.estimator.performance)."""

    ttft_seconds: float | None = Field(default=None, alias="ttftSeconds", gt=0, le=3600, description=(
        "Time to first token at the percentile, seconds."))
    tpot_milliseconds: float | None = Field(default=None, alias="tpotMilliseconds", gt=0, le=60_000, description=(
        "Time per output token after the first, at the percentile, milliseconds."))
    percentile: float = Field(default=99.0, ge=50, lt=100, description="Over requests; 99 by default.")
    requests_per_second: float | None = Field(default=None, alias="requestsPerSecond", gt=0, le=1_000_000,
                                              description="The load as Poisson arrivals, requests/s in total.")
    concurrency: int | None = Field(default=None, ge=1, le=1_000_000, description=(
        "The load as clients that each send their next request when the last is answered, in total."))
    mean_input_tokens: int = Field(alias="meanInputTokens", ge=1, le=10_000_000, description="Mean prompt length.")
    mean_output_tokens: int = Field(alias="meanOutputTokens", ge=1, le=10_000_000, description="Mean output length.")

    @model_validator(mode="after")
    def _complete(self) -> ServingSLO:
        if self.ttft_seconds is None and self.tpot_milliseconds is None:
            raise ValueError("serving.slo needs ttftSeconds, tpotMilliseconds or both")
        if (self.requests_per_second is None) == (self.concurrency is None):
            raise ValueError("serving.slo needs the load as exactly one of requestsPerSecond and concurrency")
        return self


class Placement(_Model):
    gpu_types: list[str] = Field(default_factory=list, alias="gpuTypes", max_length=32, description=(
        "Allowed GPU types (kvscale catalog names such as H100-80GB, L4). Empty: any type the cluster has."))
    quantization: list[Quantization] = Field(default_factory=lambda: [Quantization.AUTO], min_length=1,
                                             max_length=9, description=(
        "Allowed weight formats; auto is the checkpoint's own."))
    prefer: Preference = Field(default=Preference.COST, description=(
        "cost: cheapest feasible plan; quality: least quantized plan, then cheapest."))
    max_gpus_per_replica: int = Field(default=8, alias="maxGPUsPerReplica", ge=1, le=16, description=(
        "Upper bound on tensor-parallel size."))
    max_nodes_per_replica: int = Field(default=DEFAULT_MAX_NODES_PER_REPLICA, alias="maxNodesPerReplica", ge=1,
                                       le=16, description=(
        "Nodes one replica may span for a model no single node holds: tensor parallel over each node's GPUs, "
        "a pipeline stage per node, run as a LeaderWorkerSet. 1: single-node replicas only."))
    inter_node_gbits: float = Field(default=DEFAULT_INTER_NODE_GBITS, alias="interNodeGbits", gt=0, description=(
        "Bandwidth of the link between nodes (Gb/s per node) that a replica spanning nodes is estimated with."))
    group_topology_key: str | None = Field(default=None, alias="groupTopologyKey", max_length=317, description=(
        "A replica spanning nodes: the node label whose domains (a rack, a network block) each hold one "
        "whole group and no other (LeaderWorkerSet's exclusive topology). Unset: groups may share a domain."))
    tensor_parallel_size: int | None = Field(default=None, alias="tensorParallelSize", ge=1, le=16, description=(
        "Fix the tensor-parallel size instead of letting kvscale choose."))
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector", description=(
        "Extra node labels the vLLM pods must match."))
    tolerations: list[dict[str, Any]] = Field(default_factory=list, description=(
        "Extra tolerations for the vLLM pods (the GPU taint is tolerated already)."),
        json_schema_extra={"items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}})
    affinity: dict[str, Any] = Field(default_factory=dict, description=(
        "Pod affinity (corev1 Affinity). Required node terms are combined with the planned GPU type's."),
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    priority_class_name: str | None = Field(default=None, alias="priorityClassName", max_length=253, description=(
        "PriorityClass of the vLLM pods (GPU serving usually outranks batch work)."))
    runtime_class_name: str | None = Field(default=None, alias="runtimeClassName", max_length=253, description=(
        "RuntimeClass of the vLLM pods (e.g. nvidia when the GPU runtime is not the default)."))
    spread_across_nodes: bool = Field(default=True, alias="spreadAcrossNodes", description=(
        "Spread replicas over nodes (topology spread, best effort): one node lost takes the fewest replicas."))


# where the spec says replica metrics come from (autoscaler.sources.MetricsSource reads them)
class MetricsConfig(_Model):
    type: MetricsSourceType = Field(default=MetricsSourceType.POD, description=(
        "pod: scrape each Ready pod's vLLM /metrics; prometheus: query a Prometheus that already scrapes vLLM."))
    prometheus_url: str | None = Field(default=None, alias="prometheusURL", max_length=1024, description=(
        "Prometheus base URL (type prometheus)."))
    bearer_token_secret: str | None = Field(default=None, alias="bearerTokenSecret", max_length=253, description=(
        "Secret (key 'token') with a bearer token for Prometheus."))


class Activation(_Model):
    """Demand seen where no replica runs, so a model at zero replicas can come back (KEDA's activation)."""

    query: str = Field(min_length=1, max_length=2048, description=(
        "PromQL whose value is the demand for this model while it has no replica, e.g. the request rate or "
        "the requests waiting at the gateway or ingress in front of it. Read from metrics.prometheusURL."))
    threshold: float = Field(default=0.0, ge=0, description=(
        "Above this value a model at zero replicas gets one; while it is above, the last replica stays."))


class Autoscaling(_Model):
    enabled: bool = Field(default=True, description="Scale replicas on KV-cache utilization.")
    dry_run: bool = Field(default=False, alias="dryRun", description=(
        "Record decisions in status and Events without changing replicas."))
    min_replicas: int = Field(default=1, alias="minReplicas", ge=0, le=1000, description=(
        "Lower bound; 0 allows scale to zero when idle (needs activation)."))
    max_replicas: int = Field(default=4, alias="maxReplicas", ge=1, le=1000, description="Upper bound.")
    target_kv_cache_utilization: float = Field(default=0.7, alias="targetKVCacheUtilization", gt=0, le=1,
                                               description="KV-cache usage per replica to hold, in (0, 1].")
    max_waiting_per_replica: float = Field(default=2.0, alias="maxWaitingPerReplica", ge=0, description=(
        "Queued requests per replica that trigger a scale-up."))
    max_preemptions_per_second: float = Field(default=0.1, alias="maxPreemptionsPerSecond", ge=0, description=(
        "Preemption rate per replica that triggers a scale-up."))
    scale_up_stabilization_seconds: int = Field(default=0, alias="scaleUpStabilizationSeconds", ge=0, le=3600,
                                                description="Window before a scale-up.")
    scale_down_stabilization_seconds: int = Field(default=300, alias="scaleDownStabilizationSeconds", ge=0,
                                                  le=86400, description="Window of low load before a scale-down.")
    max_scale_up_step: int = Field(default=4, alias="maxScaleUpStep", ge=1, le=100, description=(
        "Most replicas added at once."))
    max_scale_down_percent: int = Field(default=50, alias="maxScaleDownPercent", ge=1, le=100, description=(
        "Most of the replicas removed by one scale-down, in percent (at least one)."))
    scale_down_period_seconds: int = Field(default=0, alias="scaleDownPeriodSeconds", ge=0, le=3600, description=(
        "Least time between two scale-downs."))
    max_queue_seconds: float | None = Field(default=None, alias="maxQueueSeconds", gt=0, le=3600, description=(
        "Queue-time objective: requests should wait at most this long before their prefill starts "
        "(vllm:request_queue_time_seconds, interpolated between its bucket bounds). Catches compute-bound load "
        "(prefill bursts, long prompts) that KV usage misses. Unset: queue time is not a signal."))
    max_slow_request_fraction: float = Field(default=0.01, alias="maxSlowRequestFraction", gt=0, lt=1, description=(
        "Share of requests allowed to queue longer than maxQueueSeconds before scaling up."))
    burst_memory_seconds: int = Field(default=1800, alias="burstMemorySeconds", ge=0, le=86400, description=(
        "Bursts shorter than a cold start: once queues drive growth again within this long of the last "
        "time, the replica count they reached is kept until this long after the latest, and restored when "
        "a burst returns after a scale-down. 0 disables."))
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Where KV-cache metrics come from.")
    activation: Activation | None = Field(default=None, description=(
        "How a model scaled to zero sees new demand (required with minReplicas 0)."))


class RolloutStrategy(StrEnum):
    AUTO = "auto"
    SURGE = "surge"
    REPLACE = "replace"


class VLLMSpec(_Model):
    image: str | None = Field(default=None, max_length=512, description=(
        "vLLM server image. Default: the GPU catalog's image for the planned GPU's vendor (CUDA or ROCm), "
        "at the vLLM release the estimator models."))
    extra_args: list[str] = Field(default_factory=list, alias="extraArgs", max_length=64, description=(
        "Extra vLLM arguments (appended). Flags kvscale plans (tensor parallelism, lengths, batch limits, "
        "memory, KV dtype, quantization) are refused here: set them through their spec fields."))
    env: list[dict[str, Any]] = Field(default_factory=list, description=(
        "Container env (e.g. a variable from a Secret via valueFrom.secretKeyRef)."),
        json_schema_extra={"items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}})
    resources: dict[str, Any] = Field(default_factory=dict, description=(
        "CPU, memory and ephemeral-storage requests and limits, overriding the ones kvscale derives from the "
        "plan (GPUs are always the plan's)."),
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    port: int = Field(default=8000, ge=1, le=65535, description="Port of the OpenAI API and /metrics.")
    pod_monitor: bool = Field(default=False, alias="podMonitor", description=(
        "Also create a Prometheus Operator PodMonitor."))
    volumes: list[dict[str, Any]] = Field(default_factory=list, max_length=32, description=(
        "Extra pod volumes (corev1 Volume)."),
        json_schema_extra={"items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}})
    volume_mounts: list[dict[str, Any]] = Field(default_factory=list, alias="volumeMounts", max_length=32,
                                                description="Extra mounts in the vLLM container (corev1 VolumeMount).",
                                                json_schema_extra={"items": {
                                                    "type": "object", "x-kubernetes-preserve-unknown-fields": True}})
    startup_seconds: int | None = Field(default=None, alias="startupSeconds", ge=30, le=86_400, description=(
        "Longest a replica may take to serve (startupProbe budget). Default: from the checkpoint size and "
        "where it loads from (download, cache or local)."))
    drain_seconds: int = Field(default=120, alias="drainSeconds", ge=0, le=3600, description=(
        "On scale-down and rollout, how long a replica keeps finishing its in-flight requests after it leaves "
        "the Service (preStop drain; the grace period adds a margin)."))
    rollout: RolloutStrategy = Field(default=RolloutStrategy.AUTO, description=(
        "surge: start the new replica before stopping an old one (needs spare GPUs); replace: stop one, then "
        "start its successor (never waits for spare GPUs); auto: surge when the cluster has room for one more "
        "replica, else replace."))
    max_unavailable: int = Field(default=1, alias="maxUnavailable", ge=0, le=1000, description=(
        "PodDisruptionBudget: replicas voluntary disruptions (node drains) may take down at once."))
    service_account_name: str | None = Field(default=None, alias="serviceAccountName", max_length=253, description=(
        "ServiceAccount of the vLLM pods (its token is not mounted)."))
    image_pull_secrets: list[str] = Field(default_factory=list, alias="imagePullSecrets", max_length=16,
                                          description="Secrets for pulling the vLLM image.")
    run_as_user: int | None = Field(default=None, alias="runAsUser", ge=1, le=2_147_483_647, description=(
        "Run vLLM as this non-root uid (runAsNonRoot). The upstream vLLM images run as root, so it is unset "
        "by default; images built for a uid should set it."))


class LLMDeploymentSpec(_Model):
    model: ModelRef
    serving: Serving
    placement: Placement = Field(default_factory=Placement)
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    vllm: VLLMSpec = Field(default_factory=VLLMSpec)
    replicas: int | None = Field(default=None, ge=0, le=1000, description=(
        "Replica count. Written by kvscale's autoscaler through the scale subresource when autoscaling is "
        "enabled (GitOps tools should ignore this field)."))


CEL_RULES: dict[str, list[dict[str, str]]] = {
    # path in the schema -> rules
    "spec.autoscaling": [
        {"rule": "self.minReplicas <= self.maxReplicas",
         "message": "autoscaling.minReplicas must be <= autoscaling.maxReplicas"},
        {"rule": "self.minReplicas > 0 || has(self.activation)",
         "message": "autoscaling.minReplicas 0 needs autoscaling.activation: at zero replicas no vLLM runs to "
                    "report load, so only a demand signal from in front of it (a gateway's requests, in "
                    "Prometheus) can bring the model back"},
        {"rule": "!has(self.activation) || (has(self.metrics) && has(self.metrics.prometheusURL))",
         "message": "autoscaling.activation is a Prometheus query: set autoscaling.metrics.prometheusURL"},
        {"rule": "!has(self.metrics) || self.metrics.type != 'prometheus' || has(self.metrics.prometheusURL)",
         "message": "autoscaling.metrics.prometheusURL is required when metrics.type is prometheus"},
    ],
    "spec.model": [
        {"rule": "!has(self.cache) || !has(self.cache.create) || !self.cache.create || "
                 "self.cache.accessMode != 'ReadOnlyMany'",
         "message": "model.cache: a claim kvscale creates starts empty, so it must be ReadWriteMany"},
        {"rule": "!has(self.cache) || has(self.cache.claimName) || (has(self.cache.create) && self.cache.create)",
         "message": "model.cache needs claimName or create: true"},
        {"rule": "!has(self.uri) || !(self.uri.startsWith('s3://') || self.uri.startsWith('gs://')) || "
                 "!has(self.cache)",
         "message": "model.cache is for Hugging Face downloads; s3:// and gs:// weights are streamed, not cached"},
    ],
    "spec.serving": [
        {"rule": "!has(self.slo) || self.slo.meanInputTokens + self.slo.meanOutputTokens <= self.maxModelLen",
         "message": "serving.slo: meanInputTokens + meanOutputTokens must fit maxModelLen"},
    ],
    "spec.serving.slo": [
        {"rule": "has(self.ttftSeconds) || has(self.tpotMilliseconds)",
         "message": "serving.slo needs ttftSeconds, tpotMilliseconds or both"},
        {"rule": "has(self.requestsPerSecond) != has(self.concurrency)",
         "message": "serving.slo needs the load as exactly one of requestsPerSecond and concurrency"},
    ],
    "spec.placement": [
        {"rule": "!has(self.tensorParallelSize) || !has(self.maxGPUsPerReplica) || "
                 "self.tensorParallelSize <= self.maxGPUsPerReplica",
         "message": "placement.tensorParallelSize must be <= placement.maxGPUsPerReplica"},
    ],
}

PRINTER_COLUMNS = [
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.name"},
    {"name": "GPU", "type": "string", "jsonPath": ".status.plan.gpu"},
    {"name": "TP", "type": "integer", "jsonPath": ".status.plan.tensorParallelSize"},
    {"name": "Quant", "type": "string", "jsonPath": ".status.plan.quantization"},
    {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
    {"name": "Desired", "type": "integer", "jsonPath": ".status.desiredReplicas"},
    {"name": "KV-Util", "type": "string", "jsonPath": ".status.kvCacheUtilization"},
    {"name": "Planned", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Planned\")].status"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


class Condition(_Model):
    type: str
    status: str = Field(description="True, False or Unknown.")
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = Field(default=None, alias="lastTransitionTime")
    observed_generation: int | None = Field(default=None, alias="observedGeneration")


class PlanStatus(_Model):
    gpu: str
    gpu_product_label: str | None = Field(default=None, alias="gpuProductLabel")
    tensor_parallel_size: int = Field(alias="tensorParallelSize")
    quantization: str
    pipeline_parallel_size: int | None = Field(default=None, alias="pipelineParallelSize", description=(
        "Pipeline stages of a replica spanning nodes (one per node); unset for a single-node replica."))
    nodes_per_replica: int | None = Field(default=None, alias="nodesPerReplica", description=(
        "Nodes one replica spans (the LeaderWorkerSet group size); unset for a single-node replica."))
    gpus_per_node: int | None = Field(default=None, alias="gpusPerNode", description=(
        "GPUs each pod of a replica spanning nodes requests."))
    interconnect: str | None = Field(default=None, description=(
        "The links the replica's GPUs talk over (NVLink or PCIe in a node; the inter-node link across nodes)."))
    replicas_for_target: int = Field(alias="replicasForTarget", description=(
        "Replicas needed for the target: serving.slo's load within its latency targets when set, else the whole "
        "target concurrency (serving.targetConcurrency) in KV cache."))
    weights_gib: float = Field(alias="weightsGiB", description="Weights per GPU.")
    kv_cache_gib: float = Field(alias="kvCacheGiB", description="KV cache memory per GPU.")
    kv_cache_tokens: int = Field(alias="kvCacheTokens", description="KV cache capacity per replica, in tokens.")
    kv_cache_blocks: int = Field(alias="kvCacheBlocks", description="Predicted vLLM num_gpu_blocks per replica.")
    kv_cache_measured: bool = Field(default=False, alias="kvCacheMeasured", description=(
        "True: the KV cache figures are what a live replica of this layout allocated (status.calibration, "
        "or the operator's calibration ConfigMap), not the estimate."))
    max_concurrency: float = Field(alias="maxConcurrency", description="Sequences of maxModelLen per replica.")
    cost_per_hour: float = Field(alias="costPerHour", description="Per replica, from the GPU catalog prices.")
    decode_tokens_per_second: float = Field(alias="decodeTokensPerSecond", description=(
        "Output tokens per second per replica: served at serving.slo's load when set, else its capacity with "
        "the KV cache full of maxModelLen sequences."))
    ttft_ms: float | None = Field(default=None, alias="ttftMs", description=(
        "Predicted time to first token per replica at serving.slo's load and percentile."))
    tpot_ms: float | None = Field(default=None, alias="tpotMs", description=(
        "Predicted time per output token per replica at serving.slo's load and percentile."))


class Alternative(_Model):
    summary: str


# an autoscaler decision as status records it (autoscaler.policy.Decision is the one the policy returns);
# a comment, not a docstring: docstrings become the CRD's descriptions
class DecisionRecord(_Model):
    time: str
    replicas: int
    desired_replicas: int = Field(alias="desiredReplicas")
    valid: bool
    reason: str
    applied: bool = True


class BurstReplicas(_Model):
    time: float
    replicas: int


class TooSmall(_Model):
    replicas: int
    time: float


class AutoscalerRecord(_Model):
    """What the autoscaler keeps beyond one window (Unix seconds): a new leader decides as the last would."""

    last_scale_down_time: float | None = Field(default=None, alias="lastScaleDownTime", description=(
        "The last scale-down: the next waits autoscaling.scaleDownPeriodSeconds from it."))
    panic_until: float | None = Field(default=None, alias="panicUntil", description=(
        "Until when a panic (a burst beyond the fleet) holds scale-down."))
    last_queue_pressure_time: float | None = Field(default=None, alias="lastQueuePressureTime", description=(
        "The last time queues asked for more replicas than memory: pressure within a minute of it is the same "
        "burst, not a new one."))
    burst_times: list[float] = Field(default_factory=list, alias="burstTimes", max_length=64, description=(
        "When episodes of queue-driven growth began (autoscaling.burstMemorySeconds)."))
    burst_replicas: list[BurstReplicas] = Field(default_factory=list, alias="burstReplicas", max_length=64,
                                                description="Fleet sizes queue bursts grew to, for the burst memory.")
    too_small: TooSmall | None = Field(default=None, alias="tooSmall", description=(
        "The fleet size that last missed the queue-time objective: no scale-down to it for a window."))


class EstimatorCheck(_Model):
    predicted_blocks: int = Field(alias="predictedBlocks")
    observed_blocks: int = Field(alias="observedBlocks")
    error_percent: float = Field(alias="errorPercent")


# a replica of a plan that failed to start, and what it taught the planner (a comment: docstrings become
# the CRD's descriptions)
class StartupFailureRecord(_Model):
    time: str
    spec_hash: str = Field(alias="specHash", description=(
        "The spec it failed under: only failures of the current spec count."))
    plan_hash: str = Field(alias="planHash")
    gpu: str
    tensor_parallel_size: int = Field(alias="tensorParallelSize")
    pipeline_parallel_size: int | None = Field(default=None, alias="pipelineParallelSize")
    quantization: str
    cause: str = Field(description="KVCacheTooSmall, NoKVCacheMemory, GPUOutOfMemory or UnsupportedOnGPU.")
    message: str = Field(max_length=400, description="vLLM's own words, with its numbers.")
    missing_gib: float | None = Field(default=None, alias="missingGiB", description=(
        "Per GPU, memory the estimate counted as KV cache that vLLM did not have: reserved on this GPU type "
        "when planning again."))
    reserved_bytes: int = Field(default=0, alias="reservedBytes", description=(
        "Per GPU, what earlier failures of this spec had already reserved on this GPU type when this plan was "
        "made: the next reserve is this plus missingGiB."))


# what a live replica of one layout allocated, against the estimate of that layout (a comment: docstrings
# become the CRD's descriptions)
class CalibrationRecord(_Model):
    model: str
    gpu: str
    tensor_parallel_size: int = Field(alias="tensorParallelSize")
    pipeline_parallel_size: int | None = Field(default=None, alias="pipelineParallelSize")
    quantization: str
    kv_cache_dtype: str = Field(alias="kvCacheDtype")
    vllm_release: str = Field(alias="vllmRelease", description="Release line of the image that ran it.")
    engine_args: str = Field(default="", alias="engineArgs", description=(
        "Hash of spec.vllm.extraArgs and spec.model.architecture: a measurement applies to the same only."))
    predicted_blocks: int = Field(alias="predictedBlocks", description="The estimate, nothing measured applied.")
    measured_blocks: int = Field(alias="measuredBlocks", description="num_gpu_blocks the replica reported.")
    block_size: int = Field(alias="blockSize", description="Tokens per block, as the replica reported.")
    unaccounted_bytes: int = Field(alias="unaccountedBytes", description=(
        "Per GPU, memory the estimate does not account for (negative: vLLM found more KV memory): "
        "subtracted from the KV cache of every plan of this layout."))
    pod: str
    time: str
    # what the replica's start-up log states (readPodLogs; GPU backends only)
    weights_gib: float | None = Field(default=None, alias="weightsGiB")
    available_kv_cache_gib: float | None = Field(default=None, alias="availableKVCacheGiB")
    cuda_graph_gib: float | None = Field(default=None, alias="cudaGraphGiB")


class LLMDeploymentStatus(_Model):
    observed_generation: int | None = Field(default=None, alias="observedGeneration")
    conditions: list[Condition] = Field(default_factory=list)
    plan: PlanStatus | None = None
    plan_hash: str | None = Field(default=None, alias="planHash")
    spec_hash: str | None = Field(default=None, alias="specHash", description=(
        "The spec (replicas aside) the plan was made for: a spec change re-plans, a scale does not."))
    plan_unavailable_since: str | None = Field(default=None, alias="planUnavailableSince", description=(
        "Since when no Ready node offers the planned GPU type; past a grace period kvscale re-plans."))
    children: dict[str, str] = Field(default_factory=dict, description=(
        "What kvscale applied (Kind/name -> generation or resourceVersion read back): a child that is "
        "deleted or edited by someone else no longer matches, and is restored."))
    alternatives: list[Alternative] = Field(default_factory=list, max_length=10)
    rejected: list[str] = Field(default_factory=list, max_length=20, description="Why other options were rejected.")
    replicas: int | None = None
    ready_replicas: int | None = Field(default=None, alias="readyReplicas")
    desired_replicas: int | None = Field(default=None, alias="desiredReplicas", description=(
        "Replicas kvscale last set on the vLLM Deployment."))
    recommended_replicas: int | None = Field(default=None, alias="recommendedReplicas", description=(
        "Replicas the autoscaler last recommended (applied unless autoscaling.dryRun)."))
    selector: str | None = Field(default=None, description="Label selector of the vLLM pods (scale subresource).")
    kv_cache_utilization: str | None = Field(default=None, alias="kvCacheUtilization")
    last_decision: DecisionRecord | None = Field(default=None, alias="lastDecision")
    history: list[DecisionRecord] = Field(default_factory=list, max_length=20)
    autoscaler: AutoscalerRecord | None = None
    estimator_check: EstimatorCheck | None = Field(default=None, alias="estimatorCheck")
    startup_failures: list[StartupFailureRecord] = Field(default_factory=list, alias="startupFailures",
                                                         max_length=10, description=(
        "Plans whose replicas failed to start, newest last: each re-plan avoids them (at most 3 per spec)."))
    calibration: list[CalibrationRecord] = Field(default_factory=list, max_length=8, description=(
        "KV blocks live replicas allocated, per layout: plans of a measured layout use them in place of "
        "the estimate."))
