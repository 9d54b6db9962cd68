"""Model weights from a shared cache volume, and a node drain under the PodDisruptionBudget, on real nodes.

The Hub is an offline stand-in (``kvscale.testing.hf_mirror``) on the host end of the cluster's veth,
reached by the pods through ``HF_ENDPOINT``; it serves a real random-weight safetensors checkpoint of
the tiny Llama and records every request. The cache claim is the one kvscale creates, bound to a
hostPath PersistentVolume both nodes share (they run on one machine). The LLMDeployment is named
``vllm``, so its Service is too: a pod with service links would get ``VLLM_PORT=tcp://...``.
"""

from __future__ import annotations

import base64
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client import ApiException

from kvscale.operator.resource import GROUP, PLURAL, VERSION
from kvscale.testing.cluster import LocalCluster
from kvscale.testing.hf_mirror import HFMirror, write_checkpoint
from kvscale.testing.operator_process import OperatorProcess
from kvscale.testing.tiny_deployment import MODEL, tiny_llmdeployment
from kvscale.testing.vllm_server import tiny_model_config, vllm_python
from kvscale.testing.waiting import wait_for

pytestmark = [pytest.mark.realnode, pytest.mark.vllm, pytest.mark.cluster, pytest.mark.slow]

REPO_ID = "kvscale/llama-kv-heavy"
MIRROR_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kvscale" / "hf-mirror"
STORAGE_CLASS = "kvscale-test-cache"
START_TIMEOUT_S = 420
TOKEN = "hf_kvscale_test_token"


def ready_pods(api: Any, ns: str) -> list[Any]:
    return [p for p in client.CoreV1Api(api).list_namespaced_pod(ns, label_selector="kvscale.io/llmdeployment=vllm")
            .items if not p.metadata.deletion_timestamp
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]


def start_seconds(pod: Any) -> float:
    ready = next(c for c in pod.status.conditions if c.type == "Ready")
    return (ready.last_transition_time - pod.metadata.creation_timestamp).total_seconds()


def cordon(api: Any, node: str, on: bool) -> None:
    client.CoreV1Api(api).patch_node(node, {"spec": {"unschedulable": on}})


def evict(api: Any, ns: str, pod: str) -> int:
    body = client.V1Eviction(metadata=client.V1ObjectMeta(name=pod, namespace=ns))
    try:
        client.CoreV1Api(api).create_namespaced_pod_eviction(pod, ns, body)
        return 201
    except ApiException as exc:
        return int(exc.status)


def test_replicas_share_the_model_cache_and_a_drain_evicts_them_one_at_a_time(
        real_cluster: LocalCluster, real_api: Any, real_namespace: str, real_operator: OperatorProcess,
        tmp_path: Path) -> None:
    ns, core = real_namespace, client.CoreV1Api(real_api)
    assert real_cluster.real is not None
    x, y = (n.name for n in real_cluster.real.nodes)
    write_checkpoint(MIRROR_ROOT / REPO_ID, tiny_model_config(MODEL), vllm_python())
    mirror = HFMirror(MIRROR_ROOT, host=real_cluster.bind_address).start()
    pv = f"{ns}-cache"
    core.create_persistent_volume({"metadata": {"name": pv}, "spec": {
        "capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": STORAGE_CLASS,
        "persistentVolumeReclaimPolicy": "Retain",
        "hostPath": {"path": str(tmp_path / "cache"), "type": "DirectoryOrCreate"}}})
    core.create_namespaced_secret(ns, {"metadata": {"name": "hf"},
                                       "data": {"token": base64.b64encode(TOKEN.encode()).decode()}})
    body = tiny_llmdeployment("vllm", compile_cache=False, vllm={  # the model cache holds the compile cache
        "extraArgs": ["--skip-tokenizer-init", "--dtype", "bfloat16"],  # real weights this time
        "env": [{"name": "HF_ENDPOINT", "value": mirror.url}]})
    body["spec"]["model"].update({"name": REPO_ID, "hfTokenSecret": {"name": "hf"},
                                  "cache": {"create": True, "storageClassName": STORAGE_CLASS}})
    body["spec"]["model"].pop("uri")
    body["spec"]["autoscaling"] = {"enabled": False}
    body["spec"]["replicas"] = 1
    api = client.CustomObjectsApi(real_api)
    cordon(real_api, x, True)  # both replicas start on y, so draining y has two to evict
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
        first = wait_for(lambda: ready_pods(real_api, ns), START_TIMEOUT_S, "first replica Ready", every=2)[0]
        claim = core.read_namespaced_persistent_volume_claim("vllm-model-cache", ns)
        assert claim.status.phase == "Bound" and claim.spec.volume_name == pv
        weights = mirror.downloads(".safetensors")
        assert len(weights) == 1, mirror.requests  # the first replica downloaded the checkpoint once
        assert TOKEN in mirror.tokens  # HF_TOKEN came from the Secret
        env = {e.name: e for e in first.spec.containers[0].env}
        assert env["HF_TOKEN"].value is None and env["HF_TOKEN"].value_from.secret_key_ref.name == "hf"
        assert not any(k.startswith("VLLM_PORT") for k in env)

        api.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "vllm", {"spec": {"replicas": 2}})
        both = wait_for(lambda: len(r := ready_pods(real_api, ns)) == 2 and r, START_TIMEOUT_S,
                        "second replica Ready", every=2)
        second = next(p for p in both if p.metadata.name != first.metadata.name)
        assert mirror.downloads(".safetensors") == weights  # the second read the cache: no new download
        # and the graphs the first compiled: vLLM's compile cache lives on the same volume, and the second
        # replica opens the artifact the first saved. (vLLM 0.32.0's CPU build then fails to load it,
        # "'function' object has no attribute 'finalize_loading'", and compiles again: what is asserted is
        # that the cache is shared, which is what spares a GPU replica its compile.)
        saved = re.search(r"saved AOT compiled function to (/models-cache/vllm/\S+)",
                          core.read_namespaced_pod_log(first.metadata.name, ns, container="vllm"))
        assert saved, "the first replica saved no compiled graph in the model cache"
        assert (tmp_path / "cache" / Path(saved[1]).relative_to("/models-cache")).exists()
        log = core.read_namespaced_pod_log(second.metadata.name, ns, container="vllm")
        opened = re.search(rf"(Directly load AOT compilation from path|load failure from) {re.escape(saved[1])}", log)
        assert opened, "\n".join(line for line in log.splitlines() if re.search(r"(?i)compil|cache", line))
        print(f"second replica: {'loaded' if opened[1].startswith('Directly') else 'found but could not load'} "
              f"the first's compiled graph at {saved[1]}")
        t_first, t_second = start_seconds(first), start_seconds(second)
        assert {p.spec.node_name for p in both} == {y}

        # drain y: the budget (maxUnavailable 1) lets one replica go, holds the other until a successor serves
        cordon(real_api, x, False)
        cordon(real_api, y, True)
        policy = client.PolicyV1Api(real_api)
        wait_for(lambda: (policy.read_namespaced_pod_disruption_budget("vllm", ns).status.disruptions_allowed or 0)
                 == 1, 60, "the budget counts both replicas")
        a, b = (p.metadata.name for p in both)
        assert evict(real_api, ns, a) == 201
        assert evict(real_api, ns, b) == 429
        t_evict = time.monotonic()
        served: list[int] = []
        code = 429
        while True:
            ready = ready_pods(real_api, ns)
            served.append(len(ready))
            if any(p.spec.node_name == x for p in ready):
                break
            assert time.monotonic() - t_evict < START_TIMEOUT_S, "no successor on the other node"
            code = evict(real_api, ns, b)
            if code == 201:  # the successor turned Ready between the read above and this eviction
                assert any(p.spec.node_name == x for p in ready_pods(real_api, ns)), \
                    "the last serving replica was evicted before its successor was Ready"
                break
            assert code == 429  # refused as long as only one replica serves
            time.sleep(3)
        t_successor = time.monotonic() - t_evict
        assert min(served) >= 1  # a replica served throughout the drain
        if code != 201:
            assert wait_for(lambda: evict(real_api, ns, b) == 201, 60, "second eviction once the successor serves")
        assert mirror.downloads(".safetensors") == weights
        print(f"\nmodel cache: first replica Ready in {t_first:.0f}s (downloaded {len(weights)} checkpoint file), "
              f"second in {t_second:.0f}s from the cache; drain: second eviction refused for "
              f"{t_successor:.0f}s until the successor on {x} served; "
              f"hub requests: {len(mirror.requests)}, checkpoint GETs: {len(mirror.downloads('.safetensors'))}")
    finally:
        cordon(real_api, x, False)
        cordon(real_api, y, False)
        mirror.stop()
        api.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "vllm")
        wait_for(lambda: not core.list_namespaced_pod(ns).items, 240, "pods gone", every=2)
        core.delete_persistent_volume(pv)
