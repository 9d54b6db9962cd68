"""Start-up failures read from what vLLM and kubelet report."""

from __future__ import annotations

from pathlib import Path

from kvscale.operator.startup_failures import StartupCause, classify_container, classify_log

DATA = Path(__file__).parent / "data"


def test_vllm_032s_kv_cache_too_small_error_is_read_with_its_numbers() -> None:
    f = classify_log((DATA / "vllm_0.32_kv_too_small.log").read_text())
    assert f is not None and f.cause is StartupCause.KV_TOO_SMALL
    assert (f.max_model_len, f.needed_kv_gib, f.available_kv_gib, f.estimated_max_model_len) == \
        (32768, 2.0, 0.99, 16256)
    assert f.evidence.startswith("ValueError: To serve at least one request")
    assert "needs 2 GiB of KV cache, vLLM had 0.99 GiB" in f.summary() and "16,256 tokens" in f.summary()


def test_the_log_tail_kubelet_keeps_does_not_hold_the_root_cause() -> None:
    """The termination message of that failure (its last 2 KiB) is the API server's traceback: it names no
    cause, so the previous container's log has to be read."""
    tail = (DATA / "vllm_0.32_kv_too_small.termination").read_text().split("\n", 1)[1]
    assert "Engine core initialization failed" in tail and len(tail.encode()) <= 2048
    assert classify_log(tail) is None
    status = {"lastState": {"terminated": {"reason": "Error", "exitCode": 1, "message": tail}}}
    assert classify_container(status) is None
    found = classify_container(status, log=(DATA / "vllm_0.32_kv_too_small.log").read_text())
    assert found is not None and found.cause is StartupCause.KV_TOO_SMALL


def test_older_releases_wording_and_the_other_causes() -> None:
    # vllm-project/vllm#10517 (V0 engine): the same failure, worded before 0.10
    old = classify_log("ValueError: The model's max seq len (29000) is larger than the maximum number of tokens that "
                       "can be stored in KV cache (23648). Try increasing `gpu_memory_utilization`")
    assert old is not None and (old.cause, old.max_model_len, old.estimated_max_model_len) == \
        (StartupCause.KV_TOO_SMALL, 29000, 23648)
    none_left = classify_log("(EngineCore pid=7) ERROR [core.py:1] ValueError: No available memory for the cache "
                             "blocks. Try increasing `gpu_memory_utilization`")
    assert none_left is not None and none_left.cause is StartupCause.NO_KV_MEMORY
    assert none_left.evidence.startswith("ValueError: No available memory")
    oom = classify_log("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.96 GiB. GPU 0 has a total "
                       "capacity of 79.10 GiB of which 1.20 GiB is free.")
    assert oom is not None and oom.cause is StartupCause.GPU_OUT_OF_MEMORY
    fp8 = classify_log("ValueError: The quantization method fp8 is not supported for the current GPU. Minimum "
                       "capability: 89. Current capability: 80.")
    assert fp8 is not None and fp8.cause is StartupCause.UNSUPPORTED and "Current capability: 80" in fp8.evidence
    killed = classify_container({"lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}})
    assert killed is not None and killed.cause is StartupCause.HOST_OUT_OF_MEMORY and "137" in killed.evidence
    assert classify_log("INFO: Started server process") is None


def test_a_failed_replicas_line_carries_its_cause_and_a_restart_with_other_numbers_does_not_make_it_new() -> None:
    from kvscale.operator.autoscale import pod_failures

    def crashed(restarts: int) -> dict[str, object]:
        return {"metadata": {"name": "chat-0"}, "status": {"containerStatuses": [{
            "name": "vllm", "ready": False, "restartCount": restarts,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"reason": "Error", "exitCode": 1}}}]}}

    kv = classify_log((DATA / "vllm_0.32_kv_too_small.log").read_text())
    assert kv is not None
    ((key, line),) = pod_failures([crashed(2)], {"chat-0": kv}).items()
    assert line.startswith("pod chat-0 container vllm: Error, exit code 1, CrashLoopBackOff, KVCacheTooSmall: ")
    assert line.endswith(", 2 restarts") and key == "pod chat-0 container vllm: Error (KVCacheTooSmall)"
    # out of GPU memory again, with other figures in vLLM's words: the same failure
    first = classify_log("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.96 GiB.")
    second = classify_log("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.10 GiB.")
    assert first is not None and second is not None
    a, b = pod_failures([crashed(1)], {"chat-0": first}), pod_failures([crashed(2)], {"chat-0": second})
    assert list(a) == list(b) and list(a.values()) != list(b.values())
    assert "1.96 GiB" in next(iter(a.values()))
    ((plain_key, plain),) = pod_failures([crashed(2)]).items()
    assert "KVCacheTooSmall" not in plain and plain_key == "pod chat-0 container vllm: Error"
