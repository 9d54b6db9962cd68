"""Server-side apply with one field manager, and small reads/writes the handlers need."""

from __future__ import annotations

from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from .resource import GROUP, PLURAL, VERSION

FIELD_MANAGER = "kvscale"

APPLY = "application/apply-patch+yaml"


def server_side_apply(api: client.ApiClient, obj: dict[str, Any]) -> Any:
    """Apply ``obj`` as field manager ``kvscale`` (forcing ownership of the fields it sets)."""
    ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
    kw: dict[str, Any] = {"field_manager": FIELD_MANAGER, "force": True, "_content_type": APPLY}
    key = (obj["apiVersion"], obj["kind"])
    if key == ("apps/v1", "Deployment"):
        return client.AppsV1Api(api).patch_namespaced_deployment(name, ns, obj, **kw)
    if key == ("v1", "Service"):
        return client.CoreV1Api(api).patch_namespaced_service(name, ns, obj, **kw)
    if key == ("monitoring.coreos.com/v1", "PodMonitor"):
        return client.CustomObjectsApi(api).patch_namespaced_custom_object(
            "monitoring.coreos.com", "v1", ns, "podmonitors", name, obj, **kw)
    raise ValueError(f"kvscale does not apply {key}")


def read_deployment(api: client.ApiClient, namespace: str, name: str) -> Any | None:
    try:
        return client.AppsV1Api(api).read_namespaced_deployment(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def patch_llmd_status(api: client.ApiClient, namespace: str, name: str, status: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {"status": status})


def read_llmd(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        obj = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        return dict(obj)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
