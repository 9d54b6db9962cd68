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
    """The last line is the API server's: alone it names no cause, so the log has to be read."""
    last = (DATA / "vllm_0.32_kv_too_small.log").read_text().splitlines()[-1]
    assert last.startswith("RuntimeError: Engine core initialization failed")
    assert classify_log(last) is None
    status = {"lastState": {"terminated": {"reason": "Error", "exitCode": 1, "message": last}}}
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


def test_a_failed_replicas_line_carries_its_cause_and_a_restart_does_not_make_it_new() -> None:
    from kvscale.operator.autoscale import failure_key, pod_failures

    crashed = {"metadata": {"name": "chat-0"}, "status": {"containerStatuses": [{
        "name": "vllm", "ready": False, "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"reason": "Error", "exitCode": 1}}}]}}
    cause = classify_log((DATA / "vllm_0.32_kv_too_small.log").read_text())
    assert cause is not None
    (line,) = pod_failures([crashed], {"chat-0": cause})
    assert line.startswith("pod chat-0 container vllm: Error, exit code 1, CrashLoopBackOff, KVCacheTooSmall: ")
    assert line.endswith(", 2 restarts")
    again = {**crashed, "status": {"containerStatuses": [{**crashed["status"]["containerStatuses"][0],
                                                          "restartCount": 3}]}}
    (later,) = pod_failures([again], {"chat-0": cause})
    assert failure_key(later) == failure_key(line)
    (plain,) = pod_failures([crashed])
    assert "KVCacheTooSmall" not in plain
