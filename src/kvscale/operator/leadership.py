"""One active operator replica: a ``coordination.k8s.io`` Lease, held by renewing it.

Only the holder runs Kopf and the periodic worker, so two replicas never act on the same object.
A holder that cannot renew within ``renew_deadline_s`` stops the process (as controller-runtime does):
past that point a standby may already lead. A holder that shuts down cleanly releases the Lease, so
the standby takes over at its next retry instead of after a whole lease duration.

The Kubernetes client's own ``leaderelection`` package cannot be stopped and never releases its
Lease, which a rolling update of the operator needs; hence this small elector.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from kubernetes import client
from kubernetes.client import ApiException

log = logging.getLogger("kvscale.leadership")

#: client-go's defaults (leaderelection.LeaderElectionConfig): a dead holder is replaced after at most
#: LEASE_DURATION_S + RETRY_PERIOD_S; a live one has RENEW_DEADLINE_S to get a renewal through
LEASE_DURATION_S = 15
RENEW_DEADLINE_S = 10.0
RETRY_PERIOD_S = 2.0
#: a Lease call that hangs (a partition, not a refusal) must not stall the loop that notices the lost lease
REQUEST_TIMEOUT_S = 4.0


class Action(StrEnum):
    CREATE = "create"  # no Lease yet
    ACQUIRE = "acquire"  # free, released, or expired: take it
    RENEW = "renew"  # ours: extend it
    WAIT = "wait"  # someone else holds it and is renewing


@dataclass(frozen=True)
class LeaseView:
    """What the elector reads from a Lease."""

    holder: str | None
    duration_s: int
    renew_time: str | None  # as written; compared for change only, never against our clock
    resource_version: str
    transitions: int


def lease_action(lease: LeaseView | None, identity: str, unchanged_for_s: float) -> Action:
    """What to do with the Lease, given how long its record has stayed the same (pure).

    Expiry is judged by how long this replica has seen the record unchanged, not by the holder's
    timestamps, so clock skew between nodes cannot hand the Lease to two replicas.
    """
    if lease is None:
        return Action.CREATE
    if lease.holder == identity:
        return Action.RENEW
    if not lease.holder or unchanged_for_s >= lease.duration_s:
        return Action.ACQUIRE
    return Action.WAIT


def _micro_time(now: dt.datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _view(lease: client.V1Lease) -> LeaseView:
    spec = lease.spec or client.V1LeaseSpec()
    renew = spec.renew_time.isoformat() if isinstance(spec.renew_time, dt.datetime) else spec.renew_time
    return LeaseView(holder=spec.holder_identity or None, duration_s=int(spec.lease_duration_seconds or 0),
                     renew_time=renew, resource_version=str(getattr(lease.metadata, "resource_version", "")),
                     transitions=int(spec.lease_transitions or 0))


class LeaseElector:
    """Campaign for the Lease in a thread; ``leading`` is set while this replica holds it."""

    def __init__(self, api: client.ApiClient, name: str, namespace: str, identity: str,
                 on_lost: Callable[[], None]) -> None:
        self.api, self.name, self.namespace, self.identity = api, name, namespace, identity
        self.on_lost = on_lost
        self.leading = threading.Event()
        self.stop = threading.Event()
        self.last_loop = time.monotonic()
        self._seen: tuple[str | None, str | None] | None = None
        self._seen_at = time.monotonic()
        self._thread: threading.Thread | None = None

    @property
    def holder(self) -> str | None:
        return self._seen[0] if self._seen else None

    def start(self) -> LeaseElector:
        self._thread = threading.Thread(target=self._run, name="kvscale-leader-election", daemon=True)
        self._thread.start()
        return self

    def alive(self) -> bool:
        """The campaign is running and has looped recently (for the liveness probe)."""
        stale = time.monotonic() - self.last_loop > RENEW_DEADLINE_S + 4 * RETRY_PERIOD_S
        return self._thread is not None and self._thread.is_alive() and not stale

    def _run(self) -> None:
        last_renewed = time.monotonic()
        while not self.stop.is_set():
            self.last_loop = time.monotonic()
            try:
                held = self._try()
            except Exception as exc:  # an unreachable apiserver: keep trying, never crash the campaign
                log.warning("leader election: %s", exc)
                held = False
            if held:
                if not self.leading.is_set():
                    log.info("leading: %s holds Lease %s/%s", self.identity, self.namespace, self.name)
                    self.leading.set()
                last_renewed = time.monotonic()
            elif self.leading.is_set() and time.monotonic() - last_renewed > RENEW_DEADLINE_S:
                log.error("lost the Lease %s/%s (no renewal for %.0f s): stopping", self.namespace, self.name,
                          RENEW_DEADLINE_S)
                self.leading.clear()
                self.on_lost()
                return
            self.stop.wait(RETRY_PERIOD_S)

    def _try(self) -> bool:
        coord = client.CoordinationV1Api(self.api)
        try:
            lease = coord.read_namespaced_lease(self.name, self.namespace, _request_timeout=REQUEST_TIMEOUT_S)
        except ApiException as exc:
            if exc.status != 404:
                raise
            lease = None
        view = _view(lease) if lease is not None else None
        key = (view.holder, view.renew_time) if view else None
        if key != self._seen:
            self._seen, self._seen_at = key, time.monotonic()
        action = lease_action(view, self.identity, time.monotonic() - self._seen_at)
        if action is Action.WAIT:
            return False
        now = _micro_time(dt.datetime.now(dt.UTC))
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": LEASE_DURATION_S, "renewTime": now}
        try:
            if action is Action.CREATE:
                coord.create_namespaced_lease(self.namespace, {  # type: ignore[arg-type]
                    "metadata": {"name": self.name}, "spec": {**spec, "acquireTime": now, "leaseTransitions": 0}},
                    _request_timeout=REQUEST_TIMEOUT_S)
            else:
                assert view is not None
                if action is Action.ACQUIRE:
                    spec |= {"acquireTime": now, "leaseTransitions": view.transitions + 1}
                coord.patch_namespaced_lease(self.name, self.namespace, {
                    "metadata": {"resourceVersion": view.resource_version}, "spec": spec},
                    _request_timeout=REQUEST_TIMEOUT_S)
        except ApiException as exc:
            if exc.status in (409, 422):  # another replica wrote first
                return False
            raise
        self._seen, self._seen_at = (self.identity, now), time.monotonic()
        return True

    def release(self) -> None:
        """Stop campaigning; if holding the Lease, hand it over now (holder cleared)."""
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout=RETRY_PERIOD_S + 5)
        if not self.leading.is_set():
            return
        self.leading.clear()
        try:
            coord = client.CoordinationV1Api(self.api)
            view = _view(coord.read_namespaced_lease(self.name, self.namespace))
            if view.holder == self.identity:
                coord.patch_namespaced_lease(self.name, self.namespace, {
                    "metadata": {"resourceVersion": view.resource_version},
                    "spec": {"holderIdentity": None, "leaseDurationSeconds": 1}})
                log.info("released Lease %s/%s", self.namespace, self.name)
        except ApiException as exc:
            log.warning("could not release Lease %s/%s: %s", self.namespace, self.name, exc.reason)
