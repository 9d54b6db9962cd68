"""A Kubernetes device plugin that advertises fake GPUs (``nvidia.com/gpu`` by default).

It speaks the kubelet's device-plugin API (``v1beta1``, gRPC over unix sockets): it registers
on ``/var/lib/kubelet/device-plugins/kubelet.sock``, streams its device list from
``ListAndWatch``, and answers ``Allocate`` with the environment the NVIDIA plugin sets. The
kubelet itself then counts and enforces the devices, so a pod asking for more GPUs than a node
has stays Pending there exactly as on a GPU node. When the kubelet restarts (it removes every
socket in its plugin directory) the plugin notices its socket is gone and registers again.

The message types are built at run time from a descriptor written from the API's published
field numbers, so no generated code is needed.

    python -m kvscale.testing.device_plugin --resource nvidia.com/gpu --count 8 --node NAME
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

API_VERSION = "v1beta1"
PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")
KUBELET_SOCKET = PLUGIN_DIR / "kubelet.sock"
HEALTHY = "Healthy"
#: how often the plugin checks that the kubelet has not removed its socket (a kubelet restart)
SOCKET_CHECK_S = 2.0

_F = descriptor_pb2.FieldDescriptorProto
_STRING, _BOOL, _INT64, _MSG = _F.TYPE_STRING, _F.TYPE_BOOL, _F.TYPE_INT64, _F.TYPE_MESSAGE
_ONE, _MANY = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED

# message -> [(field, number, type, label, message type)] as in the v1beta1 api.proto
_MESSAGES: dict[str, list[tuple[str, int, int, int, str]]] = {
    "DevicePluginOptions": [("pre_start_required", 1, _BOOL, _ONE, ""),
                            ("get_preferred_allocation_available", 2, _BOOL, _ONE, "")],
    "RegisterRequest": [("version", 1, _STRING, _ONE, ""), ("endpoint", 2, _STRING, _ONE, ""),
                        ("resource_name", 3, _STRING, _ONE, ""), ("options", 4, _MSG, _ONE, "DevicePluginOptions")],
    "Empty": [],
    "NUMANode": [("ID", 1, _INT64, _ONE, "")],
    "TopologyInfo": [("nodes", 1, _MSG, _MANY, "NUMANode")],
    "Device": [("ID", 1, _STRING, _ONE, ""), ("health", 2, _STRING, _ONE, ""),
               ("topology", 3, _MSG, _ONE, "TopologyInfo")],
    "ListAndWatchResponse": [("devices", 1, _MSG, _MANY, "Device")],
    "PreStartContainerRequest": [("devices_ids", 1, _STRING, _MANY, "")],
    "PreStartContainerResponse": [],
    "ContainerPreferredAllocationRequest": [("available_deviceIDs", 1, _STRING, _MANY, ""),
                                            ("must_include_deviceIDs", 2, _STRING, _MANY, ""),
                                            ("allocation_size", 3, _F.TYPE_INT32, _ONE, "")],
    "PreferredAllocationRequest": [("container_requests", 1, _MSG, _MANY, "ContainerPreferredAllocationRequest")],
    "ContainerPreferredAllocationResponse": [("deviceIDs", 1, _STRING, _MANY, "")],
    "PreferredAllocationResponse": [("container_responses", 1, _MSG, _MANY, "ContainerPreferredAllocationResponse")],
    "ContainerAllocateRequest": [("devices_ids", 1, _STRING, _MANY, "")],
    "AllocateRequest": [("container_requests", 1, _MSG, _MANY, "ContainerAllocateRequest")],
    "ContainerAllocateResponse": [("envs", 1, _MSG, _MANY, "ContainerAllocateResponse.EnvsEntry")],
    "AllocateResponse": [("container_responses", 1, _MSG, _MANY, "ContainerAllocateResponse")],
}


def _build_messages() -> dict[str, Any]:
    fdp = descriptor_pb2.FileDescriptorProto(name="kvscale/deviceplugin_v1beta1.proto", package=API_VERSION,
                                             syntax="proto3")
    for name, fields in _MESSAGES.items():
        msg = fdp.message_type.add(name=name)
        for fname, number, ftype, label, tname in fields:
            f = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if tname:
                f.type_name = f".{API_VERSION}.{tname}"
        if name == "ContainerAllocateResponse":  # map<string, string> envs = 1
            entry = msg.nested_type.add(name="EnvsEntry")
            entry.field.add(name="key", number=1, type=_STRING, label=_ONE)
            entry.field.add(name="value", number=2, type=_STRING, label=_ONE)
            entry.options.map_entry = True
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{API_VERSION}.{name}"))
            for name in _MESSAGES}


M = _build_messages()


def device_ids(node: str, count: int) -> list[str]:
    return [f"GPU-kvscale-{node}-{i}" for i in range(count)]


class FakeGPUPlugin:
    """Serves ``count`` healthy fake devices of ``resource`` until stopped."""

    def __init__(self, resource: str, count: int, node: str, plugin_dir: Path = PLUGIN_DIR) -> None:
        self.resource, self.node, self.plugin_dir = resource, node, plugin_dir
        self.devices = device_ids(node, count)
        self.socket = plugin_dir / f"kvscale-{resource.replace('/', '-')}.sock"
        self.stop = threading.Event()
        self._server: grpc.Server | None = None

    # ----- the DevicePlugin service -----
    def get_options(self, request: Any, context: Any) -> Any:
        return M["DevicePluginOptions"]()

    def list_and_watch(self, request: Any, context: Any) -> Any:
        yield M["ListAndWatchResponse"](devices=[M["Device"](ID=d, health=HEALTHY) for d in self.devices])
        while not self.stop.is_set() and context.is_active():
            self.stop.wait(1.0)

    def allocate(self, request: Any, context: Any) -> Any:
        out = M["AllocateResponse"]()
        for creq in request.container_requests:
            unknown = [d for d in creq.devices_ids if d not in self.devices]
            if unknown:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown devices {unknown}")
            resp = out.container_responses.add()
            resp.envs["NVIDIA_VISIBLE_DEVICES"] = ",".join(creq.devices_ids)
        return out

    def preferred(self, request: Any, context: Any) -> Any:
        return M["PreferredAllocationResponse"]()

    def pre_start(self, request: Any, context: Any) -> Any:
        return M["PreStartContainerResponse"]()

    def _handlers(self) -> grpc.GenericRpcHandler:
        def unary(fn: Any, req: str, resp: str) -> Any:
            return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=M[req].FromString,
                                                       response_serializer=M[resp].SerializeToString)
        return grpc.method_handlers_generic_handler(f"{API_VERSION}.DevicePlugin", {
            "GetDevicePluginOptions": unary(self.get_options, "Empty", "DevicePluginOptions"),
            "ListAndWatch": grpc.unary_stream_rpc_method_handler(
                self.list_and_watch, request_deserializer=M["Empty"].FromString,
                response_serializer=M["ListAndWatchResponse"].SerializeToString),
            "GetPreferredAllocation": unary(self.preferred, "PreferredAllocationRequest",
                                            "PreferredAllocationResponse"),
            "Allocate": unary(self.allocate, "AllocateRequest", "AllocateResponse"),
            "PreStartContainer": unary(self.pre_start, "PreStartContainerRequest", "PreStartContainerResponse"),
        })

    # ----- lifecycle -----
    def serve(self) -> None:
        self.socket.unlink(missing_ok=True)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self._server.add_generic_rpc_handlers((self._handlers(),))
        self._server.add_insecure_port(f"unix://{self.socket}")
        self._server.start()

    def register(self) -> None:
        with grpc.insecure_channel(f"unix://{self.plugin_dir / KUBELET_SOCKET.name}") as ch:
            call = ch.unary_unary(f"/{API_VERSION}.Registration/Register",
                                  request_serializer=M["RegisterRequest"].SerializeToString,
                                  response_deserializer=M["Empty"].FromString)
            call(M["RegisterRequest"](version=API_VERSION, endpoint=self.socket.name, resource_name=self.resource),
                 timeout=10)

    def run(self) -> None:
        # The kubelet empties its plugin directory when it starts, so serve only once its own socket is
        # there, and start over whenever ours disappears (a kubelet restart) or registration fails.
        kubelet_socket = self.plugin_dir / KUBELET_SOCKET.name
        while not self.stop.is_set():
            if not kubelet_socket.exists():
                self.stop.wait(0.5)
                continue
            self.serve()
            try:
                self.register()
            except grpc.RpcError as err:
                print(f"registration failed ({err.code()}); retrying", flush=True)
                if self._server is not None:
                    self._server.stop(grace=0)
                self.stop.wait(1.0)
                continue
            print(f"registered {len(self.devices)} x {self.resource} on {self.node}", flush=True)
            while not self.stop.is_set() and self.socket.exists():
                self.stop.wait(SOCKET_CHECK_S)
            if self._server is not None:
                self._server.stop(grace=0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resource", default="nvidia.com/gpu")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--plugin-dir", type=Path, default=PLUGIN_DIR)
    args = p.parse_args(argv)
    plugin = FakeGPUPlugin(args.resource, args.count, args.node, args.plugin_dir)
    signal.signal(signal.SIGTERM, lambda *_: plugin.stop.set())
    plugin.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
