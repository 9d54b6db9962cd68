"""The vLLM command line of a replica: every engine setting the estimate depends on, explicitly (pure).

vLLM's defaults move between releases and differ by device; a flag left implicit is a number the
estimate assumed and the server may not use. So each one is rendered, and ``extraArgs`` that would
override one are refused with the spec field to use instead.
"""

from __future__ import annotations

from ..estimator.planner import Plan
from .model_source import ModelSource
from .resource import LLMDeploymentSpec

#: flags kvscale sets -> where in the spec they are set instead (aliases vLLM accepts included)
PLANNED_FLAGS: dict[str, str] = {
    "--model": "spec.model.uri",
    "--served-model-name": "spec.model.name",
    "--revision": "spec.model.revision",
    "--port": "spec.vllm.port",
    "--tensor-parallel-size": "spec.placement.tensorParallelSize",
    "-tp": "spec.placement.tensorParallelSize",
    "--pipeline-parallel-size": "spec.placement.maxNodesPerReplica (a stage per node is planned)",
    "-pp": "spec.placement.maxNodesPerReplica (a stage per node is planned)",
    "--nnodes": "spec.placement.maxNodesPerReplica (a replica spanning nodes is a LeaderWorkerSet group)",
    "--node-rank": "the LeaderWorkerSet (each pod's index in its group)",
    "--master-addr": "the LeaderWorkerSet (its leader's address)",
    "--master-port": "the LeaderWorkerSet (the group's pods meet on vLLM's default port)",
    "--distributed-executor-backend": "the plan (one node: vLLM's default; several: its own multi-node "
                                      "multiprocessing, no Ray cluster to run)",
    "--headless": "the LeaderWorkerSet (its workers run headless)",
    "--data-parallel-size": "spec.autoscaling (replicas are kvscale's data parallelism)",
    "-dp": "spec.autoscaling (replicas are kvscale's data parallelism)",
    "--max-model-len": "spec.serving.maxModelLen",
    "--gpu-memory-utilization": "spec.serving.gpuMemoryUtilization",
    "--kv-cache-dtype": "spec.serving.kvCacheDtype",
    "--quantization": "spec.placement.quantization",
    "-q": "spec.placement.quantization",
    "--max-num-seqs": "spec.serving.maxNumSeqs",
    "--max-num-batched-tokens": "spec.serving.maxNumBatchedTokens",
    "--block-size": "spec.serving.blockSize",
    "--enable-prefix-caching": "spec.serving.enablePrefixCaching",
    "--no-enable-prefix-caching": "spec.serving.enablePrefixCaching",
    "--kv-cache-memory-bytes": "the plan (it sizes the KV cache from gpuMemoryUtilization)",
    "--num-gpu-blocks-override": "the plan (it sizes the KV cache from gpuMemoryUtilization)",
    "--shutdown-timeout": "spec.vllm.drainSeconds",
}
#: flags kvscale sets only for some model sources
SOURCE_FLAGS: dict[str, str] = {"--load-format": "spec.model.uri (s3:// and gs:// stream with runai_streamer)"}


def _flag(arg: str) -> str | None:
    """The option an argument names, normalised as vLLM's parser does (``--a_b=1`` -> ``--a-b``)."""
    if not arg.startswith("-") or arg == "-" or arg[1:2].isdigit():
        return None
    name = arg.split("=", 1)[0]
    return "--" + name[2:].replace("_", "-") if name.startswith("--") else name


def conflicting_args(extra: list[str], source: ModelSource) -> list[str]:
    """One message per extraArgs flag that would override a planned one (empty: none)."""
    rendered = {f for f in map(_flag, source.flags) if f}
    out = []
    for arg in extra:
        flag = _flag(arg)
        if flag in PLANNED_FLAGS:
            out.append(f"{flag} is planned by kvscale: set {PLANNED_FLAGS[flag]}")
        elif flag in SOURCE_FLAGS and flag in rendered:
            out.append(f"{flag} is set for {SOURCE_FLAGS[flag]}")
    return out


#: where a replica's pods meet: vLLM's own default port for the multi-node process group (ParallelConfig.master_port)
MULTI_NODE_PORT = 29501
#: what LeaderWorkerSet tells each pod of a group (the controller injects these into every container)
LEADER_ADDRESS_ENV = "LWS_LEADER_ADDRESS"
WORKER_INDEX_ENV = "LWS_WORKER_INDEX"


def multi_node_args(plan: Plan, leader: bool) -> list[str]:
    """vLLM's own multi-node start-up (multiprocessing executor, no Ray): every pod of the group runs
    ``vllm serve`` with the group's size and its rank; the leader serves the API, the others run headless."""
    args = ["--pipeline-parallel-size", str(plan.pipeline_parallel_size),
            "--nnodes", str(plan.nodes_per_replica),
            "--node-rank", "0" if leader else f"$({WORKER_INDEX_ENV})",
            "--master-addr", f"$({LEADER_ADDRESS_ENV})", "--master-port", str(MULTI_NODE_PORT),
            "--distributed-executor-backend", "mp"]
    return args if leader else [*args, "--headless"]


def vllm_args(spec: LLMDeploymentSpec, plan: Plan, source: ModelSource, leader: bool = True) -> list[str]:
    s, mem = spec.serving, plan.memory
    args = [
        "--model", source.model_arg,
        "--served-model-name", spec.model.name,
        "--port", str(spec.vllm.port),
        "--tensor-parallel-size", str(plan.tensor_parallel_size),
        "--max-model-len", str(s.max_model_len),
        "--gpu-memory-utilization", f"{s.gpu_memory_utilization:g}",
        "--kv-cache-dtype", s.kv_cache_dtype.value,
        "--max-num-seqs", str(mem.max_num_seqs),
        "--max-num-batched-tokens", str(mem.max_num_batched_tokens),
        "--block-size", str(s.block_size),
        "--enable-prefix-caching" if s.enable_prefix_caching else "--no-enable-prefix-caching",
        # on SIGTERM vLLM finishes what it is running for up to this long (new requests are refused)
        "--shutdown-timeout", str(spec.vllm.drain_seconds),
    ]
    if plan.multi_node:
        args += multi_node_args(plan, leader)
    if plan.quantization_flag:
        args += ["--quantization", plan.quantization_flag]
    if spec.model.revision:
        args += ["--revision", spec.model.revision]
    return args + source.flags + list(spec.vllm.extra_args)
