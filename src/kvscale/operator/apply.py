"""Server-side apply with one field manager, and small reads/writes the handlers need."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from kubernetes import client
from kubernetes.client import ApiException

from .render import LWS_GROUP, LWS_KIND, LWS_PLURAL
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
    if key == (f"{LWS_GROUP}/v1", LWS_KIND):
        return client.CustomObjectsApi(api).patch_namespaced_custom_object(
            LWS_GROUP, "v1", ns, LWS_PLURAL, name, obj, **kw)
    if key == ("monitoring.coreos.com/v1", "PodMonitor"):
        return client.CustomObjectsApi(api).patch_namespaced_custom_object(
            "monitoring.coreos.com", "v1", ns, "podmonitors", name, obj, **kw)
    raise ValueError(f"kvscale does not apply {key}")


def marker(obj: dict[str, Any]) -> str:
    """What changes when someone else edits a child: its generation (spec changes; status writes do
    not count), else a Service's resourceVersion (Services have no generation); a claim only exists."""
    meta = obj.get("metadata") or {}
    if meta.get("generation"):
        return f"g{meta['generation']}"
    if obj.get("kind") == "Service":
        return f"r{meta.get('resourceVersion')}"
    return "exists"


_READERS: dict[str, tuple[str, str]] = {
    "Deployment": ("AppsV1Api", "read_namespaced_deployment"),
    "Service": ("CoreV1Api", "read_namespaced_service"),
    "PodDisruptionBudget": ("PolicyV1Api", "read_namespaced_pod_disruption_budget"),
    "PersistentVolumeClaim": ("CoreV1Api", "read_namespaced_persistent_volume_claim"),
}


def read_child(api: client.ApiClient, namespace: str, key: str) -> dict[str, Any] | None:
    """A child by ``Kind/name`` as a plain dict, or None when it does not exist."""
    kind, name = key.split("/", 1)
    try:
        if kind == "PodMonitor":
            obj = client.CustomObjectsApi(api).get_namespaced_custom_object(
                "monitoring.coreos.com", "v1", namespace, "podmonitors", name)
            return obj if isinstance(obj, dict) else None
        if kind == LWS_KIND:
            obj = client.CustomObjectsApi(api).get_namespaced_custom_object(LWS_GROUP, "v1", namespace, LWS_PLURAL,
                                                                            name)
            return obj if isinstance(obj, dict) else None
        if kind not in _READERS:
            return None
        group, method = _READERS[kind]
        out = getattr(getattr(client, group)(api), method)(name, namespace)
        found: dict[str, Any] = api.sanitize_for_serialization(out)  # type: ignore[no-untyped-call]
        return {**found, "kind": kind}
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(o.get("uid") == uid for o in (obj.get("metadata") or {}).get("ownerReferences") or [])


def scale_workload(api: client.ApiClient, namespace: str, name: str, kind: str, replicas: int) -> None:
    """Through the scale subresource: a Deployment's replicas, or a LeaderWorkerSet's groups."""
    body = {"spec": {"replicas": replicas}}
    if kind == LWS_KIND:
        client.CustomObjectsApi(api).patch_namespaced_custom_object_scale(
            LWS_GROUP, "v1", namespace, LWS_PLURAL, name, body, field_manager=FIELD_MANAGER)
        return
    client.AppsV1Api(api).patch_namespaced_deployment_scale(name, namespace, body, field_manager=FIELD_MANAGER)


def delete_child(api: client.ApiClient, namespace: str, key: str) -> None:
    """Delete a workload by ``Kind/name`` (gone already is fine); its pods follow by garbage collection."""
    kind, name = key.split("/", 1)
    try:
        if kind == LWS_KIND:
            client.CustomObjectsApi(api).delete_namespaced_custom_object(LWS_GROUP, "v1", namespace, LWS_PLURAL, name)
        elif kind == "Deployment":
            client.AppsV1Api(api).delete_namespaced_deployment(name, namespace)
        else:
            raise ValueError(f"kvscale does not delete {kind}")
    except ApiException as exc:
        if exc.status != 404:
            raise


class APIServed:
    """Whether the cluster serves a resource of an API group version, asked at most once per ``ttl_s``
    (an API installed later, LeaderWorkerSet's say, is seen within that time)."""

    def __init__(self, group_version: str, plural: str, ttl_s: float = 60.0) -> None:
        self.group_version, self.plural, self.ttl_s = group_version, plural, ttl_s
        self._known: tuple[float, bool] | None = None

    def served(self, api: client.ApiClient) -> bool:
        now = time.monotonic()
        if self._known is not None and now - self._known[0] < self.ttl_s:
            return self._known[1]
        group, version = self.group_version.split("/")
        try:
            found = client.CustomObjectsApi(api).get_api_resources(group, version)
            served = any(r.name == self.plural for r in (found.resources or []))
        except ApiException as exc:
            if exc.status != 404:
                raise
            served = False
        self._known = (now, served)
        return served


def read_deployment(api: client.ApiClient, namespace: str, name: str) -> Any | None:
    try:
        return client.AppsV1Api(api).read_namespaced_deployment(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


class StatusConflict(RuntimeError):
    """Another writer kept winning the race for the status: try again later."""


#: status writes tried before giving up for now: each retry re-reads, so only a writer that changes the
#: object many times a second wins them all; the jittered pause keeps two such writers from lock-stepping
STATUS_ATTEMPTS = 10
CONFLICT_PAUSE_S = (0.02, 0.2)


#: status maps written whole: a key the new value leaves out is removed, not kept
WHOLE_MAPS = ("children", "autoscaler")


def update_status(api: client.ApiClient, namespace: str, name: str, fields: dict[str, Any],
                  condition_updates: Sequence[tuple[str, bool | str, str, str]], now: str,
                  attempts: int = STATUS_ATTEMPTS,
                  generation: int | None = None, current: dict[str, Any] | None = None,
                  known: Callable[[str], None] | None = None) -> bool:
    """Merge ``fields`` into .status and set conditions on the freshest copy (optimistic concurrency),
    so writers of different conditions never erase each other's. Returns whether anything was written.

    ``generation``: the spec generation these conditions were decided on (default: the one read now);
    a condition never claims to have seen a spec newer than the one it judged. ``current``: a copy the
    caller holds (a watch's), tried first instead of a read: when it is stale the write conflicts and
    the next attempt reads. ``known``: told each resourceVersion at which the status is known as it
    is now: the one a write produced, or that of a fresh read that needed no write.
    """
    from . import conditions as c

    for attempt in range(attempts):
        obj = current if attempt == 0 and current is not None else read_llmd(api, namespace, name)
        if obj is None:
            return False
        status = obj.get("status") or {}
        gen = generation if generation is not None else obj["metadata"].get("generation")
        conds = list(status.get("conditions") or [])
        new = conds
        for ctype, ok, reason, message in condition_updates:
            new = c.set_condition(new, ctype, ok, reason, message, gen, now)
        new = c.set_condition(new, c.READY, *c.readiness(new), gen, now)
        changed = {k: v for k, v in fields.items() if status.get(k) != v}
        for whole in WHOLE_MAPS:  # a merge patch keeps map keys it does not name
            if isinstance(changed.get(whole), dict):
                changed[whole] = {**{k: None for k in status.get(whole) or {}}, **changed[whole]}
        if not changed and c.same_conditions(new, conds):
            if known is not None and obj is not current:
                known(str(obj["metadata"]["resourceVersion"]))
            return False
        body = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                "status": {**changed, "conditions": new}}
        try:
            out = client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, body, field_manager=FIELD_MANAGER)
            if known is not None and isinstance(out, dict):
                known(str(out["metadata"]["resourceVersion"]))
            return True
        except ApiException as exc:
            if exc.status != 409:
                raise
            time.sleep(random.uniform(*CONFLICT_PAUSE_S))
    raise StatusConflict(f"status of {namespace}/{name} kept changing under us ({attempts} conflicts)")


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
