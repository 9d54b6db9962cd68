"""The cluster-wide calibration ConfigMap: what one LLMDeployment's replicas measured, for every other
LLMDeployment of the same model and layout (``calibration``).

One data key per layout (``calibration.calibration_key``), the record as JSON. The operator reads it
with a short cache (plans are made often, measurements change rarely) and writes it read-modify-write
on the resourceVersion, so two operators' writes never lose one another's layouts.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from kubernetes import client

from .calibration import MAX_SHARED_RECORDS, calibration_key, updated

log = logging.getLogger("kvscale.operator")

#: how long a read of the ConfigMap is used before it is read again: a plan made meanwhile misses at most
#: this much of another object's news, and a reconcile burst costs one read
CACHE_S = 30.0
#: read-modify-write attempts when another writer got there first
WRITE_ATTEMPTS = 3
#: what an entry must carry to be read (one written by hand or by another version may lack some)
REQUIRED = ("model", "gpu", "tensorParallelSize", "quantization", "kvCacheDtype", "vllmRelease",
            "measuredBlocks", "blockSize", "predictedBlocks", "unaccountedBytes", "time")


def parse(data: dict[str, str] | None) -> list[dict[str, Any]]:
    """The records of a ConfigMap's data, newest first; an entry that is not a JSON object is skipped."""
    out = []
    for raw in (data or {}).values():
        try:
            r = json.loads(raw)
        except (TypeError, ValueError):
            continue
        if isinstance(r, dict) and all(k in r for k in REQUIRED):
            out.append(r)
    return sorted(out, key=lambda r: str(r.get("time", "")), reverse=True)


class SharedCalibration:
    def __init__(self, namespace: str, name: str) -> None:
        self.namespace, self.name = namespace, name
        self._cached: tuple[float, list[dict[str, Any]]] | None = None
        self._guard = threading.Lock()
        self._write_guard = threading.Lock()

    def records(self, api: client.ApiClient) -> list[dict[str, Any]]:
        """What the ConfigMap holds (read at most every ``CACHE_S``); on a failed read, what was read last."""
        with self._guard:
            if self._cached is not None and time.monotonic() - self._cached[0] < CACHE_S:
                return self._cached[1]
        try:
            cm = client.CoreV1Api(api).read_namespaced_config_map(self.name, self.namespace)
            found = parse(cm.data)
        except client.ApiException as exc:
            found = []
            if exc.status != 404:  # forbidden, the API server away: what was read last, and not again at once
                log.warning("could not read calibration ConfigMap %s/%s: %s", self.namespace, self.name, exc.reason)
                found = self._cached[1] if self._cached else []
        except Exception as exc:  # the connection itself
            log.warning("could not read calibration ConfigMap %s/%s: %s", self.namespace, self.name, exc)
            found = self._cached[1] if self._cached else []
        with self._guard:
            self._cached = (time.monotonic(), found)
        return found

    def add(self, api: client.ApiClient, record: dict[str, Any]) -> None:
        """Put ``record`` in place of its layout's entry (raises ApiException when every attempt failed).
        One write at a time from this process: its own threads never race one another."""
        with self._write_guard:
            self._add(api, record)

    def _add(self, api: client.ApiClient, record: dict[str, Any]) -> None:
        core = client.CoreV1Api(api)
        for attempt in range(WRITE_ATTEMPTS):
            try:
                cm = core.read_namespaced_config_map(self.name, self.namespace)
            except client.ApiException as exc:
                if exc.status != 404:
                    raise
                cm = None
            have = list(reversed(parse(cm.data if cm is not None else None)))  # oldest first
            merged = updated(have, record, MAX_SHARED_RECORDS)
            if merged is None:
                return
            data = {calibration_key(r): json.dumps(r, sort_keys=True) for r in merged}
            try:
                if cm is None:
                    core.create_namespaced_config_map(self.namespace, client.V1ConfigMap(
                        metadata=client.V1ObjectMeta(name=self.name, labels={
                            "app.kubernetes.io/managed-by": "kvscale"}), data=data))
                else:
                    cm.data = data
                    core.replace_namespaced_config_map(self.name, self.namespace, cm)  # on its resourceVersion
            except client.ApiException as exc:
                if exc.status in (409,) and attempt + 1 < WRITE_ATTEMPTS:
                    continue  # another writer first: read again
                raise
            with self._guard:
                self._cached = (time.monotonic(), list(reversed(merged)))
            return
