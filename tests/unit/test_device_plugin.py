"""The fake-GPU device plugin over its real gRPC socket (the kubelet side is tested on real nodes)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from kvscale.testing.device_plugin import API_VERSION, FakeGPUPlugin, M


def _call(sock: Path, method: str, req: object, resp: str, stream: bool = False) -> object:
    ch = grpc.insecure_channel(f"unix://{sock}")
    kind = ch.unary_stream if stream else ch.unary_unary
    fn = kind(f"/{API_VERSION}.DevicePlugin/{method}", request_serializer=lambda m: m.SerializeToString(),
              response_deserializer=M[resp].FromString)
    return fn(req, timeout=5), ch


def test_lists_its_devices_and_allocates_only_those(tmp_path: Path) -> None:
    plugin = FakeGPUPlugin("nvidia.com/gpu", 3, "n0", plugin_dir=tmp_path)
    plugin.serve()
    try:
        stream, ch = _call(plugin.socket, "ListAndWatch", M["Empty"](), "ListAndWatchResponse", stream=True)
        first = next(iter(stream))  # type: ignore[call-overload]
        assert [d.ID for d in first.devices] == ["GPU-kvscale-n0-0", "GPU-kvscale-n0-1", "GPU-kvscale-n0-2"]
        assert {d.health for d in first.devices} == {"Healthy"}
        ch.close()
        req = M["AllocateRequest"]()
        req.container_requests.add(devices_ids=["GPU-kvscale-n0-1", "GPU-kvscale-n0-2"])
        resp, ch = _call(plugin.socket, "Allocate", req, "AllocateResponse")
        assert dict(resp.container_responses[0].envs) == {  # type: ignore[attr-defined]
            "NVIDIA_VISIBLE_DEVICES": "GPU-kvscale-n0-1,GPU-kvscale-n0-2"}
        ch.close()
        bad = M["AllocateRequest"]()
        bad.container_requests.add(devices_ids=["GPU-other-9"])
        with pytest.raises(grpc.RpcError) as err:
            _call(plugin.socket, "Allocate", bad, "AllocateResponse")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        plugin.stop.set()
        if plugin._server is not None:
            plugin._server.stop(grace=0)
