"""Server-side apply with one field manager, and small reads/writes the handlers need."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kubernetes import client
from kubernetes.client import ApiException

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
    if key == ("policy/v1", "PodDisruptionBudget"):
        return client.PolicyV1Api(api).patch_namespaced_pod_disruption_budget(name, ns, obj, **kw)
    if key == ("v1", "PersistentVolumeClaim"):
        return client.CoreV1Api(api).patch_namespaced_persistent_volume_claim(name, ns, obj, **kw)
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


def update_status(api: client.ApiClient, namespace: str, name: str, fields: dict[str, Any],
                  condition_updates: Sequence[tuple[str, bool | str, str, str]], now: str, attempts: int = 5) -> bool:
    """Merge ``fields`` into .status and set conditions on the freshest copy (optimistic concurrency),
    so writers of different conditions never erase each other's. Returns whether anything was written."""
    from . import conditions as c

    for _ in range(attempts):
        obj = read_llmd(api, namespace, name)
        if obj is None:
            return False
        status = obj.get("status") or {}
        gen = obj["metadata"].get("generation")
        conds = list(status.get("conditions") or [])
        new = conds
        for ctype, ok, reason, message in condition_updates:
            new = c.set_condition(new, ctype, ok, reason, message, gen, now)
        changed = {k: v for k, v in fields.items() if status.get(k) != v}
        if not changed and c.same_conditions(new, conds):
            return False
        body = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                "status": {**changed, "conditions": new}}
        try:
            client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, body)
            return True
        except ApiException as exc:
            if exc.status != 409:
                raise
    raise RuntimeError(f"status of {namespace}/{name} kept changing under us ({attempts} conflicts)")


def patch_llmd_status(api: client.ApiClient, namespace: str, name: str, status: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {"status": status})


def read_llmd(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        obj = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        return obj if isinstance(obj, dict) else None
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def post_event(api: client.ApiClient, obj: dict[str, Any], etype: str, reason: str, message: str,
               now: str) -> None:
    """A core/v1 Event on ``obj`` (what `kubectl describe` shows)."""
    meta = obj["metadata"]
    ns = meta["namespace"]
    body = {
        "metadata": {"generateName": f"{meta['name']}.", "namespace": ns},
        "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": meta["name"],
                           "namespace": ns, "uid": meta.get("uid")},
        "type": etype, "reason": reason, "message": message[:1024],
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        "source": {"component": "kvscale-operator"}, "reportingComponent": "kvscale.io/operator",
        "reportingInstance": "kvscale-operator",
    }
    client.CoreV1Api(api).create_namespaced_event(ns, body)  # type: ignore[arg-type]
