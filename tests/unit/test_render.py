"""The vLLM pods kvscale renders: engine flags, host resources, model sources, rollout, drain, security (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from kvscale.estimator.gpus import GIB, default_catalog
from kvscale.estimator.planner import Plan
from kvscale.estimator.vllm_profiles import VLLM_RELEASE
from kvscale.operator.autoscale import DELETION_COST, deletion_costs
from kvscale.operator.discovery import free_gpus, gpu_options
from kvscale.operator.engine_args import conflicting_args
from kvscale.operator.image_version import image_release, release_check
from kvscale.operator.model_source import Origin, model_source
from kvscale.operator.planning import decide_plan
from kvscale.operator.pod_resources import PROBE_PERIOD_S, host_resources, startup_budget
from kvscale.operator.reconcile import reconcile
from kvscale.operator.render import render
from kvscale.operator.resource import LLMDeploymentSpec
from kvscale.operator.rollout import REPLACE, SURGE
from kvscale.testing.fleet import DEFAULT_FLEET, NodePool, fleet_manifests

CAT = default_catalog()


def _ready(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for n in nodes:
        n["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    return nodes


NODES = _ready(fleet_manifests(DEFAULT_FLEET))
OPTIONS = gpu_options(NODES, CAT)


def make_spec(model: dict[str, Any] | None = None, serving: dict[str, Any] | None = None,
              **sections: Any) -> LLMDeploymentSpec:
    raw = {"model": {"name": "meta-llama/Llama-3.1-8B-Instruct", **(model or {})},
           "serving": {"maxModelLen": 8192, "targetConcurrency": 4, **(serving or {})}, **sections}
    return LLMDeploymentSpec.model_validate(raw)


def planned(s: LLMDeploymentSpec, options: Any = None) -> Plan:
    outcome = decide_plan(s, options or OPTIONS, CAT)
    assert outcome.plan is not None, outcome.message
    return outcome.plan


def objects(s: LLMDeploymentSpec, free: list[int] | None = None, plan: Plan | None = None) -> dict[str, Any]:
    p = plan or planned(s)
    return {o["kind"]: o for o in render("chat", "ns", "uid", s, p, CAT, "h", 2, free_per_node=free)}


def pod_of(objs: dict[str, Any]) -> dict[str, Any]:
    return dict(objs["Deployment"]["spec"]["template"]["spec"])


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_every_setting_the_estimate_uses_is_rendered_as_the_plan_has_it() -> None:
    s = make_spec(serving={"maxNumSeqs": 64, "blockSize": 32, "enablePrefixCaching": False, "kvCacheDtype": "fp8"})
    p = planned(s)
    args = pod_of(objects(s, plan=p))["containers"][0]["args"]
    assert flag(args, "--max-num-seqs") == "64" == str(p.memory.max_num_seqs)
    assert flag(args, "--max-num-batched-tokens") == str(p.memory.max_num_batched_tokens)
    assert flag(args, "--block-size") == "32"
    assert "--no-enable-prefix-caching" in args and "--enable-prefix-caching" not in args
    assert flag(args, "--kv-cache-dtype") == "fp8"
    assert flag(args, "--gpu-memory-utilization") == "0.92"  # vLLM's own default, stated
    assert flag(args, "--tensor-parallel-size") == str(p.tensor_parallel_size)
    # vLLM's own default batch limits for the GPU are what the estimate assumed when the spec is silent
    default = planned(make_spec())
    dargs = pod_of(objects(make_spec(), plan=default))["containers"][0]["args"]
    assert flag(dargs, "--max-num-seqs") == str(default.memory.max_num_seqs)


@pytest.mark.parametrize(("extra", "named"), [
    (["--tensor-parallel-size", "2"], "--tensor-parallel-size"),
    (["--tensor_parallel_size=2"], "--tensor-parallel-size"),
    (["-tp", "2"], "-tp"),
    (["--max-num-seqs=512"], "--max-num-seqs"),
    (["--num-gpu-blocks-override", "100"], "--num-gpu-blocks-override"),
])
def test_extra_args_that_override_a_planned_flag_are_refused_with_the_flag_named(extra: list[str],
                                                                                 named: str) -> None:
    raw = make_spec(vllm={"extraArgs": ["--enforce-eager", *extra]}).model_dump(by_alias=True, exclude_none=True)
    rec = reconcile("chat", "ns", "uid", 3, raw, {}, OPTIONS, CAT, "now")
    assert rec.apply == [] and not rec.planned
    (ctype, status, reason, message), = rec.conditions
    assert (ctype, status, reason) == ("Planned", False, "ConflictingExtraArgs")
    assert named in message and "spec." in message
    assert rec.events[0].reason == "ConflictingExtraArgs"


def test_extra_args_the_plan_does_not_set_pass_through_in_order() -> None:
    s = make_spec(vllm={"extraArgs": ["--enforce-eager", "--load-format", "dummy"]})
    assert conflicting_args(s.vllm.extra_args, model_source("chat", s)) == []
    args = pod_of(objects(s))["containers"][0]["args"]
    assert args[-3:] == ["--enforce-eager", "--load-format", "dummy"]
    streamed = make_spec(model={"uri": "s3://bucket/llama"}, vllm={"extraArgs": ["--load-format", "auto"]})
    assert conflicting_args(streamed.vllm.extra_args, model_source("chat", streamed)) == [
        "--load-format is set for spec.model.uri (s3:// and gs:// stream with runai_streamer)"]


def test_host_memory_grows_with_weights_and_gpus_and_is_requested_at_its_limit() -> None:
    small = planned(make_spec())
    big_spec = make_spec(model={"name": "meta-llama/Llama-3.1-70B-Instruct"}, serving={"maxModelLen": 8192},
                         placement={"gpuTypes": ["H100-80GB"], "tensorParallelSize": 4})
    big = planned(big_spec)
    src = model_source("chat", make_spec())
    r_small = host_resources(small, src, small.memory.weights_bytes * small.gpus_per_replica)
    r_big = host_resources(big, src, big.memory.weights_bytes * big.gpus_per_replica)

    def gib(q: str) -> int:
        return int(q.removesuffix("Gi"))

    weights_gib = (big.memory.weights_bytes * 4 - small.memory.weights_bytes) / GIB  # 70B vs 8B checkpoint
    assert weights_gib > 100
    # the whole checkpoint passes through host memory, and each extra GPU adds a worker
    assert gib(r_big["requests"]["memory"]) - gib(r_small["requests"]["memory"]) >= weights_gib + 3 * 3
    for r in (r_small, r_big):
        assert r["requests"]["memory"] == r["limits"]["memory"]
        assert "cpu" not in r["limits"]  # no CFS quota on vLLM's polling loops
    assert int(r_big["requests"]["cpu"]) > int(r_small["requests"]["cpu"])
    pod = pod_of(objects(big_spec, plan=big))
    res = pod["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == "4"


def test_user_resources_override_the_derived_ones_key_by_key() -> None:
    s = make_spec(vllm={"resources": {"requests": {"cpu": "500m", "memory": "4Gi"}, "limits": {"cpu": "500m"}}})
    res = pod_of(objects(s))["containers"][0]["resources"]
    assert res["requests"]["cpu"] == res["limits"]["cpu"] == "500m"
    assert res["requests"]["memory"] == res["limits"]["memory"] == "4Gi"
    assert res["limits"]["nvidia.com/gpu"] == "1"


def test_weights_downloaded_into_the_container_request_ephemeral_storage_a_cache_does_not() -> None:
    hub = pod_of(objects(make_spec()))["containers"][0]
    eph = int(hub["resources"]["requests"]["ephemeral-storage"].removesuffix("Gi"))
    assert eph >= 15  # 16 GB of Llama-3.1-8B bf16 weights plus compile caches
    cached = pod_of(objects(make_spec(model={"cache": {"create": True}})))["containers"][0]
    assert "ephemeral-storage" not in cached["resources"]["requests"]


def test_startup_budget_follows_checkpoint_size_and_source_and_the_rollout_deadline_covers_it() -> None:
    hub, local = make_spec(), make_spec(model={"uri": "/models/llama"})
    p = planned(hub)
    size = p.memory.weights_bytes
    b_hub = startup_budget(model_source("chat", hub), size, None)
    b_local = startup_budget(model_source("chat", local), size, None)
    b_big = startup_budget(model_source("chat", hub), 10 * size, None)
    assert b_local.seconds < b_hub.seconds < b_big.seconds
    assert b_big.seconds - b_hub.seconds > 9 * size / 50e6  # the download term scales with size
    dep = objects(hub)["Deployment"]
    probe = dep["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    budget = probe["failureThreshold"] * probe["periodSeconds"]
    assert budget >= b_hub.seconds and probe["periodSeconds"] == PROBE_PERIOD_S
    assert dep["spec"]["progressDeadlineSeconds"] > budget
    fixed = objects(make_spec(vllm={"startupSeconds": 300}))["Deployment"]
    assert fixed["spec"]["template"]["spec"]["containers"][0]["startupProbe"]["failureThreshold"] == 30


def test_hf_token_is_a_secret_reference_and_the_cache_claim_is_created_with_the_checkpoint_size() -> None:
    s = make_spec(model={"hfTokenSecret": {"name": "hf"}, "cache": {"create": True, "storageClassName": "nfs"}})
    objs = objects(s)
    c = pod_of(objs)["containers"][0]
    token = next(e for e in c["env"] if e["name"] == "HF_TOKEN")
    assert token == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
    assert {"name": "HF_HOME", "value": "/models-cache"} in c["env"]
    assert {"name": "VLLM_CACHE_ROOT", "value": "/models-cache/vllm"} in c["env"]  # compiled graphs shared too
    assert any(m["mountPath"] == "/models-cache" and not m["readOnly"] for m in c["volumeMounts"])
    claim = objs["PersistentVolumeClaim"]
    assert claim["metadata"]["name"] == "chat-model-cache"
    assert claim["metadata"]["ownerReferences"][0]["uid"] == "uid"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"] and claim["spec"]["storageClassName"] == "nfs"
    size_gib = int(claim["spec"]["resources"]["requests"]["storage"].removesuffix("Gi"))
    weights_gib = planned(s).memory.weights_bytes / GIB
    assert weights_gib * 1.2 < size_gib < weights_gib * 1.4
    # an existing, filled claim: mounted read-only and vLLM told to stay offline; nothing created
    ro = objects(make_spec(model={"cache": {"claimName": "shared", "accessMode": "ReadOnlyMany"}}))
    assert "PersistentVolumeClaim" not in ro
    env = pod_of(ro)["containers"][0]["env"]
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in env
    assert not any(e["name"] == "VLLM_CACHE_ROOT" for e in env)  # a read-only volume takes no compile cache


def test_pvc_and_object_storage_uris_load_as_their_scheme_says() -> None:
    pvc = model_source("chat", make_spec(model={"uri": "pvc://weights/llama/8b"}))
    assert pvc.origin is Origin.VOLUME and pvc.model_arg == "/mnt/models/weights/llama/8b"
    assert pvc.volumes == [{"name": "model-weights", "persistentVolumeClaim": {"claimName": "weights",
                                                                              "readOnly": True}}]
    s3 = make_spec(model={"uri": "s3://bucket/llama", "credentialsSecret": "s3-creds"})
    c = pod_of(objects(s3))["containers"][0]
    assert flag(c["args"], "--model") == "s3://bucket/llama"
    assert flag(c["args"], "--load-format") == "runai_streamer"
    assert c["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    bad = make_spec(model={"uri": "ftp://host/llama"}).model_dump(by_alias=True, exclude_none=True)
    rec = reconcile("chat", "ns", "uid", 1, bad, {}, OPTIONS, CAT, "now")
    assert rec.conditions[0][2] == "InvalidModelURI" and "ftp://" in rec.conditions[0][3]


def test_rollout_replaces_when_no_node_has_room_for_a_surge_pod() -> None:
    s = make_spec(model={"name": "meta-llama/Llama-3.1-70B-Instruct"},
                  placement={"gpuTypes": ["H100-80GB"], "tensorParallelSize": 8})
    p = planned(s)
    h100 = CAT.get("H100-80GB")
    full = [{"spec": {"nodeName": n["metadata"]["name"], "containers": [
        {"resources": {"requests": {"nvidia.com/gpu": "8"}}}]}, "status": {"phase": "Running"}}
        for n in NODES if n["metadata"]["labels"].get(h100.product_label_key) in h100.product_labels]
    assert free_gpus(NODES, full, h100) == [0, 0]
    assert free_gpus(NODES, full[:1], h100) == [0, 8]
    stuck = objects(s, free=free_gpus(NODES, full, h100), plan=p)["Deployment"]
    assert stuck["spec"]["strategy"] == REPLACE
    assert "no node has 8 free" in stuck["metadata"]["annotations"]["kvscale.io/rollout"]
    assert objects(s, free=free_gpus(NODES, full[:1], h100), plan=p)["Deployment"]["spec"]["strategy"] == SURGE
    forced = make_spec(model={"name": "meta-llama/Llama-3.1-70B-Instruct"},
                       placement={"gpuTypes": ["H100-80GB"], "tensorParallelSize": 8}, vllm={"rollout": "surge"})
    assert objects(forced, free=[0, 0], plan=p)["Deployment"]["spec"]["strategy"] == SURGE


def test_drain_budget_pdb_spread_and_passthroughs() -> None:
    s = make_spec(vllm={"drainSeconds": 200, "maxUnavailable": 2, "serviceAccountName": "vllm-sa",
                        "imagePullSecrets": ["regcred"], "volumes": [{"name": "x", "emptyDir": {}}],
                        "volumeMounts": [{"name": "x", "mountPath": "/x"}]},
                  placement={"priorityClassName": "serving", "runtimeClassName": "nvidia",
                             "nodeSelector": {"zone": "a"}, "tolerations": [{"key": "spot", "operator": "Exists"}],
                             "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                                 "nodeSelectorTerms": [{"matchExpressions": [
                                     {"key": "pool", "operator": "In", "values": ["a"]}]}]}},
                                 "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}})
    objs = objects(s)
    pod = pod_of(objs)
    c = pod["containers"][0]
    assert flag(c["args"], "--shutdown-timeout") == "200"
    sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > sleep + 200
    assert objs["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 2
    assert objs["PodDisruptionBudget"]["spec"]["selector"] == objs["Deployment"]["spec"]["selector"]
    spread = pod["topologySpreadConstraints"][0]
    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert (pod["priorityClassName"], pod["runtimeClassName"], pod["serviceAccountName"]) == (
        "serving", "nvidia", "vllm-sa")
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == {"zone": "a"}
    assert {"key": "spot", "operator": "Exists"} in pod["tolerations"]
    assert {"name": "x", "emptyDir": {}} in pod["volumes"] and {"name": "x", "mountPath": "/x"} in c["volumeMounts"]
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    keys = [e["key"] for e in term["matchExpressions"]]
    assert keys == ["pool", "nvidia.com/gpu.product"]  # both required: the user's pool and the planned GPU
    assert "podAntiAffinity" in pod["affinity"]


def test_pods_are_locked_down_and_never_get_service_links() -> None:
    pod = pod_of(objects(make_spec()))
    c = pod["containers"][0]
    assert pod["enableServiceLinks"] is False and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert "runAsNonRoot" not in c["securityContext"]  # the upstream image runs as root
    nonroot = pod_of(objects(make_spec(vllm={"runAsUser": 1000})))["containers"][0]["securityContext"]
    assert nonroot["runAsNonRoot"] is True and nonroot["runAsUser"] == 1000


def test_the_image_follows_the_gpu_vendor_and_a_release_mismatch_is_a_condition() -> None:
    amd = gpu_options(_ready(fleet_manifests((NodePool(gpu="MI300X", nodes=1, gpus_per_node=8),), CAT)), CAT)
    s = make_spec(placement={"gpuTypes": ["MI300X"]})
    p = planned(s, amd)
    assert pod_of(objects(s, plan=p))["containers"][0]["image"] == f"vllm/vllm-openai-rocm:v{VLLM_RELEASE}"
    assert pod_of(objects(make_spec()))["containers"][0]["image"] == f"vllm/vllm-openai:v{VLLM_RELEASE}"
    assert image_release("rocm/vllm:rocm7.0.0_vllm_0.11.2_20251210") == (0, 11)
    assert release_check("vllm/vllm-openai:latest")[0] == "Unknown"
    old = make_spec(vllm={"image": "vllm/vllm-openai:v0.30.1"}).model_dump(by_alias=True, exclude_none=True)
    rec = reconcile("chat", "ns", "uid", 1, old, {}, OPTIONS, CAT, "now")
    version = next(x for x in rec.conditions if x[0] == "VersionMatched")
    assert version[1:3] == ("False", "VLLMVersionMismatch") and "0.30" in version[3] and VLLM_RELEASE in version[3]
    same = reconcile("chat", "ns", "uid", 1, make_spec().model_dump(by_alias=True, exclude_none=True), {},
                     OPTIONS, CAT, "now")
    assert next(x for x in same.conditions if x[0] == "VersionMatched")[1] == "True"


def test_deletion_cost_tracks_kv_in_use_and_is_written_only_when_it_changes() -> None:
    from kvscale.autoscaler.snapshot import ReplicaMetrics

    def pod(name: str, cost: str | None = None) -> dict[str, Any]:
        return {"metadata": {"name": name, "annotations": {DELETION_COST: cost} if cost else {}}}

    m = {"busy": ReplicaMetrics(0.81, 10, 0, 0), "idle": ReplicaMetrics(0.02, 1, 0, 0),
         "same": ReplicaMetrics(0.404, 4, 0, 0)}
    assert deletion_costs([pod("busy", "12"), pod("idle"), pod("same", "40"), pod("unread")], m) == {
        "busy": "81", "idle": "2"}


def test_every_kv_cache_dtype_the_estimator_sizes_is_one_the_crd_takes_and_renders() -> None:
    from kvscale.estimator.kv_cache import KV_CACHE_DTYPES
    from kvscale.operator.crd import crd_yaml

    assert "- bfloat16" in crd_yaml() and "- float16" in crd_yaml()
    for dtype in KV_CACHE_DTYPES:
        s = make_spec(serving={"maxModelLen": 4096, "kvCacheDtype": dtype})
        assert flag(pod_of(objects(s))["containers"][0]["args"], "--kv-cache-dtype") == dtype


def test_a_plan_is_sized_with_the_profile_of_the_release_its_image_runs() -> None:
    """An image of vLLM 0.10 leaves the CUDA-graph pool out of the KV budget: more KV than the default image."""
    default = decide_plan(make_spec(), OPTIONS, CAT).plan
    old = decide_plan(make_spec(vllm={"image": "vllm/vllm-openai:v0.10.2"}), OPTIONS, CAT).plan
    assert default is not None and old is not None
    assert default.memory.cuda_graph_bytes > 0 and old.memory.cuda_graph_bytes == 0
    assert old.memory.kv_cache_tokens > default.memory.kv_cache_tokens
    status, reason, message = release_check("vllm/vllm-openai:v0.10.2")
    assert (status, reason) == ("False", "VLLMVersionMismatch") and "0.10 line's profile" in message
