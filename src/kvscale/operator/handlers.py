"""Kopf handlers: parse -> pure decision -> apply. Domain outcomes become conditions, never crashes."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import kopf
import urllib3
from kubernetes import client, config

from ..autoscaler.policy import PolicyState, activate, decide
from ..autoscaler.snapshot import ReplicaMetrics, Snapshot
from ..autoscaler.sources import MetricsSource, PodScrapeSource, PrometheusSource
from ..autoscaler.state_record import recalled, remembered
from ..estimator.errors import EstimatorError
from ..estimator.gpus import GPUCatalog, load_catalog, load_prices
from . import conditions as c
from . import metrics
from .apply import (
    FIELD_MANAGER,
    APIServed,
    StatusConflict,
    delete_child,
    marker,
    owned_by,
    post_event,
    read_child,
    scale_workload,
    server_side_apply,
    update_status,
)
from .autoscale import (
    DELETION_COST,
    classify_pods,
    current_revision,
    decision_record,
    deletion_costs,
    estimator_check,
    failed_containers,
    mean_kv,
    pod_failures,
    policy_spec,
    replica_groups,
    with_history,
)
from .calibration import describe, measure, observation, updated
from .calibration_store import SharedCalibration
from .discovery import free_gpus, gpu_options
from .health import Liveness
from .latest_work import LatestWork
from .leadership import LeaseElector
from .prometheus_access import secret_error, url_error
from .reconcile import Event, Reconciliation, child_key, deployment_progress, parse_spec, reconcile, spec_hash
from .render import (
    INSTANCE_LABEL,
    LWS_GROUP,
    LWS_KIND,
    LWS_PLURAL,
    PLAN_HASH_ANNOTATION,
    VLLM_CONTAINER,
    selector_string,
    workload_kind,
    workload_name,
)
from .resource import GROUP, KIND, PLURAL, VERSION, LLMDeploymentSpec, MetricsSourceType
from .settings import OperatorSettings
from .startup_failures import StartupFailure, classify_container
from .startup_replan import MAX_RECORDS, MAX_STARTUP_REPLANS, for_spec, new_failure
from .startup_report import startup_report

log = logging.getLogger("kvscale.operator")


#: how long Kopf keeps a per-object worker (and the body it last saw) after that object's last event
IDLE_WORKER_S = 0.5

#: the parts of a vLLM pod's status the autoscale pass reads (autoscale.classify_pods, pod_failures)
REPLICA_STATUS_FIELDS = ("phase", "podIP", "conditions", "containerStatuses")

#: LLMDeployments worked on at once by the periodic pass: one slow object (a pod whose scrape times
#: out, a slow Prometheus) then delays only its own slot, and the API sees a bounded burst
PERIODIC_CONCURRENCY = 8

#: a failed vLLM's root cause sits above the API server's traceback that ends its log (~100 lines on 0.32)
LOG_TAIL_LINES = 400
LOG_LIMIT_BYTES = 256 * 1024
LOG_READ_TIMEOUT_S = 10.0


class _State:
    settings: OperatorSettings = OperatorSettings()
    catalog: GPUCatalog | None = None
    api: client.ApiClient | None = None
    # live views of Kopf's indexes, captured from the first handler call; read by the periodic worker
    nodes: kopf.Index[str, dict[str, Any]] | None = None
    objects: kopf.Index[tuple[str, str], dict[str, Any]] | None = None
    pods: kopf.Index[tuple[str, str], dict[str, Any]] | None = None  # GPU pods, for free GPUs
    replicas: kopf.Index[tuple[str, str], dict[str, Any]] | None = None  # vLLM pods, by LLMDeployment
    policy: dict[tuple[str, str], PolicyState] = {}  # noqa: RUF012
    serving: dict[tuple[str, str], set[str]] = {}  # noqa: RUF012  # pods that have answered at least once
    applied: dict[tuple[str, str], dict[str, str]] = {}  # noqa: RUF012  # children markers from the last apply
    # (generation, monotonic time) of the last reconcile that ran to its end, per object
    reconciled: dict[tuple[str, str], tuple[int, float]] = {}  # noqa: RUF012
    # resourceVersion at which kvscale last wrote or freshly read an object's status, and the objects
    # whose watch copy has since reached that version (so every later copy includes it)
    status_known: dict[tuple[str, str], str] = {}  # noqa: RUF012
    known_seen: set[tuple[str, str]] = set()  # noqa: RUF012
    locks: dict[tuple[str, str], threading.Lock] = {}  # noqa: RUF012  # one reconcile of an object at a time
    locks_guard: threading.Lock = threading.Lock()
    stop: threading.Event = threading.Event()
    worker: threading.Thread | None = None
    beat: float | None = None  # monotonic time the worker last began a pass
    # per LLMDeployment, pod -> (restart count, why that start failed): its log is read once per restart
    startup_causes: dict[tuple[str, str], dict[str, tuple[int, StartupFailure | None]]] = {}  # noqa: RUF012
    reported_failures: dict[tuple[str, str], set[str]] = {}  # noqa: RUF012  # failure keys already announced
    shared: SharedCalibration | None = None  # the cluster's calibration ConfigMap, where one is configured
    measured: dict[tuple[str, str], tuple[Any, ...]] = {}  # noqa: RUF012  # (spec, plan, blocks) last calibrated
    # replicas spanning nodes run as LeaderWorkerSets: planned only where the cluster serves that API
    multi_node: APIServed = APIServed(f"{LWS_GROUP}/v1", LWS_PLURAL)


STATE = _State()

#: threads for what children's events ask (a status mirror, a restore): few, since each is one or
#: two API calls, and the newest request per object replaces a queued one (latest_work.py)
CHILD_WRITER_THREADS = 4
WRITERS = LatestWork(CHILD_WRITER_THREADS, "kvscale-children")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def api_client() -> client.ApiClient:
    if STATE.api is None:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        cfg = client.Configuration.get_default_copy()
        cfg.connection_pool_maxsize = PERIODIC_CONCURRENCY + 4  # the worker's threads, Kopf's handlers
        STATE.api = client.ApiClient(cfg)
    return STATE.api


def _catalog() -> GPUCatalog:
    if STATE.catalog is None:
        catalog = load_catalog(STATE.settings.gpu_catalog)
        if STATE.settings.gpu_prices:
            catalog = catalog.with_prices(load_prices(STATE.settings.gpu_prices))
        STATE.catalog = catalog
    return STATE.catalog


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.posting.level = logging.WARNING  # Events are ours (kopf.info/warn), not handler chatter
    settings.watching.server_timeout = 300
    # an idle per-object worker holds the last body it saw: with pods, nodes and four kinds of children
    # watched, a thousand objects kept several hundred MB alive for Kopf's default 5 s after every event
    settings.queueing.idle_timeout = IDLE_WORKER_S
    settings.peering.standalone = True  # one active replica is elected before Kopf starts (leadership.py)
    api_client()
    _catalog()
    name = STATE.settings.calibration_configmap
    STATE.shared = SharedCalibration(STATE.settings.lease_namespace, name) if name else None


# The indexes are async: they run on Kopf's event loop at once. Sync, each event waited for a free
# executor thread behind the reconciles, and every waiting event held its whole body (at a thousand
# LLMDeployments, hundreds of MB of queued pod and node events).
@kopf.index("", "v1", "nodes")
async def gpu_nodes(body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    """Nodes by name, reduced to what GPU discovery reads."""
    return {body["metadata"]["name"]: {
        "metadata": {"name": body["metadata"]["name"], "labels": dict(body.get("metadata", {}).get("labels", {}))},
        "spec": {"unschedulable": body.get("spec", {}).get("unschedulable", False)},
        "status": {"allocatable": dict(body.get("status", {}).get("allocatable", {})),
                   "conditions": [dict(x) for x in body.get("status", {}).get("conditions", [])]},
    }}


@kopf.index(GROUP, VERSION, PLURAL)
async def llmdeployments(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """LLMDeployments by (namespace, name), for the periodic worker (no finalizer, unlike Kopf timers)."""
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    if STATE.status_known.get(key) == meta.get("resourceVersion"):
        STATE.known_seen.add(key)
    return {key: {
        "apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "metadata": _slim(meta),
        "spec": dict(body.get("spec") or {}), "status": dict(body.get("status") or {})}}


def _slim(meta: Any) -> dict[str, Any]:
    """Metadata without managedFields: nothing kvscale reads, and, with one field manager per writer
    (user, status, scale, Kopf), most of what an indexed object would otherwise hold."""
    return {k: v for k, v in meta.items() if k != "managedFields"}


@kopf.index("", "v1", "pods")
async def gpu_pods(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]] | None:
    """Pods that request GPUs, reduced to their node, phase and GPU requests: what free-GPU counting
    reads, kept current by the watch instead of a cluster-wide pod list per reconcile (at a thousand
    LLMDeployments that list was two thirds of the operator's time)."""
    names = _catalog().resource_names
    containers = []
    for ctr in (body.get("spec") or {}).get("containers") or []:
        requests = ((ctr.get("resources") or {}).get("requests") or {})
        gpus = {k: v for k, v in requests.items() if k in names}
        if gpus:
            containers.append({"resources": {"requests": gpus}})
    if not containers:
        return None
    meta = body["metadata"]
    return {(meta["namespace"], meta["name"]): {
        "spec": {"nodeName": (body.get("spec") or {}).get("nodeName"), "containers": containers},
        "status": {"phase": (body.get("status") or {}).get("phase")}}}


@kopf.index("", "v1", "pods", labels={INSTANCE_LABEL: kopf.PRESENT})
async def replica_pods(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]] | None:
    """kvscale's vLLM pods by (namespace, LLMDeployment): the autoscale pass reads them here instead of
    listing them from the API server for every object on every tick. A multi-node group's workers are
    kept too: their failures are the group's (autoscale.replica_groups)."""
    meta, st = body["metadata"], body.get("status") or {}
    return {(meta["namespace"], meta["labels"][INSTANCE_LABEL]): {
        "metadata": {k: meta.get(k) for k in ("name", "namespace", "labels", "annotations", "deletionTimestamp",
                                              "creationTimestamp") if meta.get(k) is not None},
        # what classify_pods, pod_failures and deletion_costs read; not the pod spec, the largest part
        "status": {k: st[k] for k in REPLICA_STATUS_FIELDS if k in st}}}


def _pods_of(api: client.ApiClient, ns: str, name: str) -> list[dict[str, Any]]:
    if STATE.replicas is not None:
        store = STATE.replicas.get((ns, name))
        return list(store) if store is not None else []
    pods = client.CoreV1Api(api).list_namespaced_pod(ns, label_selector=selector_string(name))
    return [api.sanitize_for_serialization(p) for p in pods.items]  # type: ignore[no-untyped-call]


def _capture(kwargs: dict[str, Any]) -> None:
    """Kopf hands its indexes to handlers only: keep them for the periodic worker."""
    STATE.nodes, STATE.objects = kwargs["gpu_nodes"], kwargs["llmdeployments"]
    STATE.pods, STATE.replicas = kwargs["gpu_pods"], kwargs["replica_pods"]


def _write_status(api: client.ApiClient, ns: str, name: str, fields: dict[str, Any],
                  updates: Sequence[tuple[str, bool | str, str, str]], now: str,
                  generation: int | None = None, trust_copy: bool = True) -> bool:
    """update_status starting from the watch's copy instead of a read, once that copy is known to
    include kvscale's own last write or read of the status (the watch has delivered that version; the
    watch is ordered, so every later copy includes it too). A copy older than kvscale's own last write
    could hide a change (a condition flipped and back) and is never trusted: then the read happens."""
    key = (ns, name)
    copy = _indexed(ns, name)
    fresh = copy is not None and (key in STATE.known_seen
                                  or STATE.status_known.get(key) == copy["metadata"].get("resourceVersion"))
    return update_status(api, ns, name, fields, updates, now, generation=generation,
                         current=copy if trust_copy and fresh else None, known=lambda rv: _known(key, rv))


def _known(key: tuple[str, str], resource_version: str) -> None:
    STATE.status_known[key] = resource_version
    STATE.known_seen.discard(key)  # after the version is set: a copy older than it is never marked seen


def _latest(index: kopf.Index[Any, dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest value of every key. The keys are copied first (in one C-level step): Kopf's watch
    changes the index from another thread while the worker and handler threads read it."""
    out = []
    for key in list(index):
        store = index.get(key)
        found = list(store) if store is not None else []
        if found:
            out.append(found[-1])
    return out


def _nodes(index: kopf.Index[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return _latest(index)


def _post(body: kopf.Body | dict[str, Any], events: list[Event]) -> None:
    obj = {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "metadata": dict(body["metadata"])}
    for ev in events:
        try:
            post_event(api_client(), obj, ev.type, ev.reason, ev.message, _now())
        except client.ApiException as exc:  # an Event lost is not worth a retry storm
            log.warning("could not post Event %s on %s: %s", ev.reason, body["metadata"]["name"], exc.reason)


def _free_gpus(nodes: list[dict[str, Any]]) -> dict[str, list[int]] | None:
    """Unrequested GPUs per node by type, from the GPU pods bound to nodes (None before the pod index
    is known: rollouts then surge)."""
    if STATE.pods is None:
        return None
    bound = _latest(STATE.pods)
    out: dict[str, list[int]] = {}
    for g in _catalog().gpus:  # the pods are counted only for the GPU types some node has
        mine = [n for n in nodes if ((n.get("metadata") or {}).get("labels") or {}).get(g.product_label_key)
                in g.product_labels]
        out[g.name] = free_gpus(mine, bound, g) if mine else []
    return out


def _live_children(api: client.ApiClient, ns: str, status: dict[str, Any]) -> dict[str, str]:
    """What exists now of what kvscale applied, as markers to compare with ``status.children``."""
    out = {}
    for key in status.get("children") or {}:
        obj = read_child(api, ns, key)
        if obj is not None:
            out[key] = marker(obj)
    return out


#: API answers that say the object itself is wrong (schema, validation): retrying cannot help
REFUSED = frozenset({400, 422})


def api_message(exc: client.ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)[:800]
    except ValueError:
        return str(exc.reason)


def _lock(key: tuple[str, str]) -> threading.Lock:
    with STATE.locks_guard:
        return STATE.locks.setdefault(key, threading.Lock())


def _recently_reconciled(body: kopf.Body | dict[str, Any]) -> bool:
    """This generation was reconciled within half the re-plan interval. Kopf's creation handler and the
    periodic pass both see a new object before its first status lands; without this, the second one
    planned it again on a stale body (and with fewer free GPUs), and its Deployment changed twice."""
    meta = body["metadata"]
    last = STATE.reconciled.get((meta["namespace"], meta["name"]))
    return last is not None and last[0] == int(meta.get("generation", 1)) \
        and time.monotonic() - last[1] < STATE.settings.replan_interval_s / 2  # the next pass still retries


def _reconcile(body: kopf.Body | dict[str, Any], gpu_nodes: kopf.Index[str, dict[str, Any]],
               unless_recent: bool = False) -> bool:
    """One object at a time; ``unless_recent``: skip a generation reconciled moments ago (see above)."""
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    with _lock(key):
        if unless_recent and _recently_reconciled(body):
            return True
        planned = _reconcile_now(body, gpu_nodes)
        STATE.reconciled[key] = (int(body["metadata"].get("generation", 1)), time.monotonic())
        return planned


def _reconcile_now(body: kopf.Body | dict[str, Any], gpu_nodes: kopf.Index[str, dict[str, Any]]) -> bool:
    meta, ns, name = body["metadata"], body["metadata"]["namespace"], body["metadata"]["name"]
    api = api_client()
    status = dict(body.get("status", {}) or {})
    nodes = _nodes(gpu_nodes)
    generation = int(meta.get("generation", 1))

    def decide(free: dict[str, list[int]] | None) -> Reconciliation:
        return reconcile(name, ns, meta["uid"], generation, dict(body.get("spec", {})), status,
                         gpu_options(nodes, _catalog()), _catalog(), _now(),
                         children=_live_children(api, ns, status), free_gpus=free, shared=shared,
                         multi_node=STATE.multi_node.served(api))

    shared = STATE.shared.records(api) if STATE.shared is not None else None

    rec = decide(None)
    if rec.apply:  # the rollout strategy depends on free GPUs: list pods only when rendering
        rec = decide(_free_gpus(nodes))
    foreign = [k for k in map(child_key, rec.apply)
               if (live := read_child(api, ns, k)) is not None and not owned_by(live, meta["uid"])]
    if foreign:  # server-side apply with force would adopt them: refuse, and say so
        message = (f"{', '.join(foreign)} already exist(s) and kvscale did not create them: it does not take over "
                   "objects it does not own; delete or rename them and kvscale applies its own")
        if _write_status(api, ns, name, {}, [(c.PLANNED, False, "NotOwned", message)], _now(),
                         generation=generation):
            _post(body, [Event("Warning", "NotOwned", message)])
        metrics.RECONCILES.labels("unplanned").inc()
        return False
    applied: dict[str, str] = {}
    for obj in rec.apply:
        try:
            done = server_side_apply(api, obj)
        except client.ApiException as exc:
            metrics.ERRORS.labels("apply").inc()
            if exc.status in REFUSED:  # the spec made an object Kubernetes will not take: say so, do not retry
                message = (f"the {obj['kind']} rendered from this spec was refused by the API server: "
                           f"{api_message(exc)} (set through spec.placement or spec.vllm)")
                if _write_status(api, ns, name, {"observedGeneration": generation},
                                 [(c.PLANNED, False, "RenderRejected", message)], _now(), generation=generation):
                    _post(body, [Event("Warning", "RenderRejected", message)])  # once, not per retry
                metrics.RECONCILES.labels("unplanned").inc()
                return False
            # anything else may pass (an API server restarting): retried, and until then the condition says
            # what the API server answered, so that no object is left without a word on why it is not running
            answer = f"{exc.status} {api_message(exc)}"[:600]
            with contextlib.suppress(client.ApiException, StatusConflict, urllib3.exceptions.HTTPError):
                _write_status(api, ns, name, {}, [(c.PLANNED, False, "ApplyFailed",
                                                   f"applying the {obj['kind']} failed: {answer}; retrying")],
                              _now(), generation=generation)
            raise kopf.TemporaryError(f"applying {obj['kind']} {name}: {answer}", delay=15) from exc
        found = done if isinstance(done, dict) else api.sanitize_for_serialization(done)  # type: ignore[no-untyped-call]
        if not isinstance(found, dict):  # a custom object's apply may answer without a body: read what it made
            found = read_child(api, ns, child_key(obj)) or {}
        applied[child_key(obj)] = marker({**found, "kind": obj["kind"]})
    for key in rec.delete:  # the workload of the other kind, after a switch between single- and multi-node
        delete_child(api, ns, key)
        log.info("%s/%s: deleted %s (the plan now runs as a %s)", ns, name, key,
                 workload_kind(rec.status.get("plan") or {}))
    if applied:
        STATE.applied[(ns, name)] = applied
        rec.status["children"] = applied
    if rec.scale is not None:
        kind = workload_kind(status.get("plan") or {})
        try:
            scale_workload(api, ns, workload_name(name, kind), kind, rec.scale)
        except client.ApiException as exc:
            rec.status.pop("desiredReplicas", None)  # never claim a count that was not applied
            log.warning("could not scale %s %s/%s to %d: %s", kind, ns, name, rec.scale, exc.reason)
    if rec.status or rec.conditions:
        try:
            _write_status(api, ns, name, rec.status, rec.conditions, _now(), generation=generation)
        except StatusConflict as exc:  # applied, but not yet recorded: the retry finds nothing to apply
            raise kopf.TemporaryError(str(exc), delay=2) from exc
    _post(body, rec.events)
    if rec.plan_changed:
        metrics.PLAN_CHANGES.inc()
    metrics.INFEASIBLE.labels(ns, name).set(0 if rec.planned else 1)
    metrics.RECONCILES.labels("planned" if rec.planned else "unplanned").inc()
    return rec.planned


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
@kopf.on.resume(GROUP, VERSION, PLURAL)
def plan_and_apply(body: kopf.Body, **kwargs: Any) -> None:
    _capture(kwargs)
    _reconcile(body, kwargs["gpu_nodes"], unless_recent=True)


def reconcile_if_due(body: dict[str, Any]) -> None:
    """What no event triggers, at the re-plan interval: impossible requests retried as the cluster
    changes (new node types, freed capacity), plans whose GPU type no Ready node offers (re-planned
    after the grace), and a spec generation no handler has recorded (a change that came back to the
    last handled spec, which Kopf sees as no change at all)."""
    if STATE.nodes is None:
        return
    status = body.get("status") or {}
    planned = c.get_condition(list(status.get("conditions") or []), c.PLANNED)
    unplanned = planned is None or planned.get("status") != "True"
    gone = not unplanned and (status.get("plan") or {}).get("gpu") not in gpu_options(_nodes(STATE.nodes),
                                                                                      _catalog())
    stale = status.get("observedGeneration") != body["metadata"].get("generation")
    # a re-plan after a failed start that did not get through (the API, a conflict) is tried again here
    failures = for_spec(status.get("startupFailures"), spec_hash(dict(body.get("spec") or {})))
    failed = any(r.get("planHash") == status.get("planHash") for r in failures) and \
        len(failures) <= MAX_STARTUP_REPLANS
    if unplanned or gone or stale or failed:
        _reconcile(body, STATE.nodes, unless_recent=True)


def _periodic(body: dict[str, Any], replan: bool) -> None:
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    latest = _indexed(*key)  # the newest copy: a long pass reaches its last objects minutes after it began
    if latest is None:
        return  # deleted since the pass began
    body = latest
    try:
        if replan:
            reconcile_if_due(body)
        autoscale(body, key)
        watch_replicas(body, key)
        mirror_groups(body, key)
    except kopf.TemporaryError as exc:  # an apply the API server refused for now: the next pass retries
        metrics.PERIODIC_FAILURES.labels("api").inc()
        log.warning("periodic work on %s/%s: %s", *key, exc)
    except StatusConflict as exc:  # another writer won every race this tick: the next tick tries again
        metrics.PERIODIC_FAILURES.labels("conflict").inc()
        log.warning("periodic work on %s/%s: %s", *key, exc)
    except (client.ApiException, urllib3.exceptions.HTTPError) as exc:  # the API server, not a bug: hold
        metrics.PERIODIC_FAILURES.labels("api").inc()
        log.warning("periodic work on %s/%s: the API server did not answer (%s); holding until it does", *key,
                    str(exc).splitlines()[0][:200])
    except Exception:  # one object's failure must not stop the others, nor the worker
        metrics.PERIODIC_FAILURES.labels("object").inc()
        log.exception("periodic work on %s/%s failed", *key)


def _forget_deleted(present: set[tuple[str, str]]) -> None:
    """Drop what the operator remembers per LLMDeployment (policy state, markers, locks) for the ones
    that no longer exist: an operator that runs for months sees many come and go."""
    tables: list[dict[tuple[str, str], Any]] = [STATE.policy, STATE.serving, STATE.applied, STATE.reconciled,
                                                STATE.status_known, STATE.startup_causes,
                                                STATE.reported_failures, STATE.measured]
    # ``present`` was taken when the pass began: one created since is in the index now, and keeps its state
    gone = {k for table in tables for k in table if k not in present and _indexed(*k) is None}
    for table in tables:
        for key in gone & set(table):
            table.pop(key, None)
    STATE.known_seen.difference_update({k for k in STATE.known_seen if k not in present and _indexed(*k) is None})
    with STATE.locks_guard:  # a lock held now belongs to a reconcile that is running: it stays
        for key in [k for k, lock in STATE.locks.items()
                    if k not in present and not lock.locked() and _indexed(*k) is None]:
            del STATE.locks[key]


def _pass(pool: ThreadPoolExecutor, replan: bool) -> None:
    if STATE.objects is None:
        return
    bodies = _latest(STATE.objects)
    _forget_deleted({(b["metadata"]["namespace"], b["metadata"]["name"]) for b in bodies})
    started = time.monotonic()
    list(pool.map(lambda b: _periodic(b, replan), bodies))
    metrics.PASS_SECONDS.set(time.monotonic() - started)


def _worker() -> None:
    """Periodic work for every LLMDeployment: autoscaling, and re-planning the unplanned.

    Supervised: whatever a pass raises is logged with its traceback and counted, and the next pass
    runs; liveness fails if passes stop (health.judge).
    """
    interval = STATE.settings.autoscale_interval_s
    last_replan = time.monotonic()
    with ThreadPoolExecutor(PERIODIC_CONCURRENCY, thread_name_prefix="kvscale-periodic") as pool:
        while not STATE.stop.wait(interval):
            STATE.beat = time.monotonic()
            replan = STATE.beat - last_replan >= STATE.settings.replan_interval_s
            if replan:
                last_replan = STATE.beat
            try:
                _pass(pool, replan)
            except Exception:
                metrics.PERIODIC_FAILURES.labels("pass").inc()
                log.exception("periodic pass failed")


def liveness(elector: LeaseElector | None) -> Liveness:
    worker = STATE.worker
    return Liveness(
        leading=elector is None or elector.leading.is_set(),
        election_alive=elector is None or elector.alive(),
        worker_started=worker is not None, worker_alive=worker is not None and worker.is_alive(),
        since_beat_s=None if STATE.beat is None else time.monotonic() - STATE.beat,
        interval_s=STATE.settings.autoscale_interval_s)


@kopf.on.startup()
def start_worker(**_: Any) -> None:
    STATE.stop.clear()
    STATE.beat = time.monotonic()
    STATE.worker = threading.Thread(target=_worker, name="kvscale-periodic", daemon=True)
    STATE.worker.start()


@kopf.on.cleanup()
def stop_worker(**_: Any) -> None:
    STATE.stop.set()
    if STATE.worker is not None:
        STATE.worker.join(timeout=10)


def _indexed(ns: str, name: str) -> dict[str, Any] | None:
    if STATE.objects is None:
        return None
    items = list(STATE.objects.get((ns, name), []))
    return items[-1] if items else None


def restore_if_drifted(kind: str, body: kopf.Body, event_type: str | None) -> None:
    """A child kvscale applied was deleted or changed by another client: apply it again now.

    Decided on Kopf's loop from the event alone (no I/O); only a child that differs from what was
    applied is read and restored, on a writer thread."""
    owners = [o for o in body["metadata"].get("ownerReferences", []) if o.get("kind") == KIND]
    if not owners or STATE.nodes is None:
        return
    ns, owner = body["metadata"]["namespace"], owners[0]["name"]
    key = f"{kind}/{body['metadata']['name']}"
    want = _applied_marker(ns, owner, key)
    have = None if event_type == "DELETED" else marker({**body, "kind": kind})
    if want is not None and have != want:
        WRITERS.submit(("restore", ns, key), lambda: _restore(ns, owner, key))


def _applied_marker(ns: str, owner: str, key: str) -> str | None:
    """What kvscale last applied of this child (None: nothing, or its owner is going away)."""
    parent = _indexed(ns, owner)
    if parent is None or parent["metadata"].get("deletionTimestamp"):
        return None  # the owner is going: garbage collection removes its children
    applied = STATE.applied.get((ns, owner)) or (parent.get("status") or {}).get("children") or {}
    return applied.get(key)


def _restore(ns: str, owner: str, key: str) -> None:
    # under the owner's lock, so a reconcile in progress has recorded what it applied: an event for its
    # own apply is not mistaken for someone else's change
    with _lock((ns, owner)):
        want = _applied_marker(ns, owner, key)
        if want is None or STATE.nodes is None:
            return
        live = read_child(api_client(), ns, key)  # a watch can deliver an event older than the last apply
        if live is not None and marker(live) == want:
            return
    parent = _indexed(ns, owner)
    if parent is None:
        return
    log.info("%s/%s %s (%s, applied as %s): restoring", ns, key, "deleted" if live is None else "changed",
             None if live is None else marker(live), want)
    try:
        _reconcile(parent, STATE.nodes)
    except (StatusConflict, kopf.TemporaryError) as exc:  # restored; recorded at the next event or pass
        log.warning("restoring %s/%s: %s", ns, key, exc)


# The children's handlers are async and return at once: what they decide to write goes to WRITERS
# with the few values it needs, so no child body waits for a thread (see latest_work.py).
@kopf.on.event("", "v1", "services", labels={INSTANCE_LABEL: kopf.PRESENT})
async def service_changed(body: kopf.Body, type: str | None, **kwargs: Any) -> None:
    _capture(kwargs)
    restore_if_drifted("Service", body, type)


@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels={INSTANCE_LABEL: kopf.PRESENT})
async def pdb_changed(body: kopf.Body, type: str | None, **kwargs: Any) -> None:
    _capture(kwargs)
    restore_if_drifted("PodDisruptionBudget", body, type)


@kopf.on.event("apps", "v1", "deployments", labels={INSTANCE_LABEL: kopf.PRESENT})
async def deployment_changed(body: kopf.Body, type: str | None, **kwargs: Any) -> None:
    """Restore the vLLM Deployment if someone else changed it; mirror its progress into the owning
    LLMDeployment's status (only on change)."""
    _capture(kwargs)
    restore_if_drifted("Deployment", body, type)
    owners = [o for o in body["metadata"].get("ownerReferences", []) if o.get("kind") == KIND]
    if not owners or type == "DELETED":
        return
    ns, name = body["metadata"]["namespace"], owners[0]["name"]
    fields, updates = deployment_progress(body)
    metrics.ACTUAL.labels(ns, name).set(fields["readyReplicas"])
    WRITERS.submit(("mirror", ns, name), lambda: _mirror(ns, name, fields, updates))


def mirror_groups(body: dict[str, Any], key: tuple[str, str]) -> None:
    """A multi-node plan's LeaderWorkerSet, read each pass: its progress mirrored, and restored if it was
    deleted or edited by someone else. Not watched through Kopf: an API that is installed after the operator
    started is not picked up, and one removed while watched stops the whole operator (Kopf 1.45)."""
    status = body.get("status") or {}
    if workload_kind(status.get("plan") or {}) != LWS_KIND:
        return
    child = f"{LWS_KIND}/{workload_name(key[1], LWS_KIND)}"
    found = read_child(api_client(), key[0], child)
    want = _applied_marker(key[0], key[1], child)
    if want is not None and (found is None or marker(found) != want):
        log.info("%s/%s %s: restoring", *key, child)
        WRITERS.submit(("restore", key[0], child), lambda: _restore(key[0], key[1], child))
        return
    if found is None:
        return
    fields, updates = deployment_progress(found)
    if any(status.get(k) != v for k, v in fields.items()):
        metrics.ACTUAL.labels(*key).set(fields["readyReplicas"])
        _mirror(*key, fields, updates)


def _mirror(ns: str, name: str, fields: dict[str, Any], updates: list[tuple[str, bool | str, str, str]]) -> None:
    try:
        _write_status(api_client(), ns, name, fields, updates, _now())
    except StatusConflict as exc:  # the next Deployment event carries the same news
        log.warning("mirroring Deployment %s/%s: %s", ns, name, exc)


def _prometheus(spec: LLMDeploymentSpec, namespace: str) -> PrometheusSource | str:
    """The spec's Prometheus, or why the operator will not query it (URL not allowed, Secret not opted in)."""
    m = spec.autoscaling.metrics
    refused = url_error(m.prometheus_url or "", STATE.settings.prometheus_urls)
    if refused:
        return refused
    token = None
    if m.bearer_token_secret:
        try:
            secret = client.CoreV1Api(api_client()).read_namespaced_secret(m.bearer_token_secret, namespace)
        except client.ApiException as exc:
            return f"spec.autoscaling.metrics.bearerTokenSecret {m.bearer_token_secret}: {exc.status} {exc.reason}"
        refused = secret_error(m.bearer_token_secret, secret.metadata.labels if secret.metadata else None)
        if refused:
            return refused
        token = base64.b64decode((secret.data or {}).get("token", "")).decode() or None
    return PrometheusSource(url=m.prometheus_url or "", bearer_token=token)


def _startup_causes(api: client.ApiClient, ns: str, key: tuple[str, str],
                    pods: list[dict[str, Any]]) -> dict[str, StartupFailure]:
    """Pod -> why its vLLM container's last start failed, from the previous container's log (read once per
    restart of that pod; a pod that has not restarted yet is classified from its termination alone)."""
    seen = STATE.startup_causes.setdefault(key, {})
    out: dict[str, StartupFailure] = {}
    failing = set()
    for pod in pods:
        name = pod["metadata"]["name"]
        for cs in failed_containers(pod):
            if cs.get("name") != VLLM_CONTAINER:
                continue
            failing.add(name)
            restarts = int(cs.get("restartCount") or 0)
            if name not in seen or seen[name][0] != restarts:
                text = None
                if restarts:
                    try:
                        text = client.CoreV1Api(api).read_namespaced_pod_log(
                            name, ns, container=VLLM_CONTAINER, previous=True, tail_lines=LOG_TAIL_LINES,
                            limit_bytes=LOG_LIMIT_BYTES, _request_timeout=LOG_READ_TIMEOUT_S)
                    # no RBAC for pods/log, the log gone, a timeout, bytes cut mid-character: the pass goes on
                    # with the termination alone, and this restart is not read again
                    except Exception as exc:
                        log.warning("could not read the previous log of %s/%s: %s", ns, name,
                                    getattr(exc, "reason", None) or exc)
                seen[name] = (restarts, classify_container(cs, text))
            if (cause := seen[name][1]) is not None:
                out[name] = cause
    for gone in set(seen) - failing:
        del seen[gone]
    return out


def autoscale(body: dict[str, Any], key: tuple[str, str]) -> None:
    """Measure -> decide (pure policy) -> scale through the scale subresource -> status + Event."""
    raw, status = dict(body.get("spec", {})), dict(body.get("status") or {})
    spec = parse_spec(raw)
    if isinstance(spec, str) or not spec.autoscaling.enabled or not status.get("plan"):
        return
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    api = api_client()
    pod_dicts = _pods_of(api, ns, name)
    view = classify_pods(replica_groups(pod_dicts), spec.vllm.port)
    # a pod that never answered is still loading its model: starting, not missing; one that served and
    # now fails readiness while its process runs is read too (it may be overloaded, not idle)
    seen = STATE.serving.setdefault(key, set())
    seen.intersection_update(t.pod for t in [*view.ready, *view.unready])
    served_unready = [t for t in view.unready if t.pod in seen]
    targets = [*view.ready, *served_unready]
    from_prometheus = spec.autoscaling.metrics.type is MetricsSourceType.PROMETHEUS
    # one allowlist check and one Secret read per pass, for the replica metrics and the activation query alike
    prom = _prometheus(spec, ns) if from_prometheus or spec.autoscaling.activation else None
    source: MetricsSource | str = prom if from_prometheus and prom is not None else PodScrapeSource()
    if isinstance(source, str):  # nothing is read, so nothing is decided: replicas hold
        _write_status(api, ns, name, {}, [(c.METRICS_AVAILABLE, False, "PrometheusRefused", source)], _now(),
                      generation=int(meta.get("generation") or 0) or None)
        return
    readings = source.read(targets)
    seen.update(readings.metrics)
    missing = tuple(p for p in readings.missing if p in seen)
    pending = view.pending + len(view.unready) - len(served_unready) + len(readings.missing) - len(missing)
    errors = tuple(e for e in readings.errors if e.split(":", 1)[0] in missing) or (
        readings.errors if not readings.metrics else ())
    # what the Deployment was last given (status.desiredReplicas is written only when applied, so dry-run
    # advice never feeds back as the fleet's size); a planned 0 stays 0
    applied = spec.replicas if spec.replicas is not None else status.get("desiredReplicas")
    current = int(applied) if applied is not None else 1
    snap = Snapshot(now=time.time(), replicas=current, ready=readings.metrics, missing=missing,
                    pending=pending, unschedulable=view.unschedulable,
                    unschedulable_reason=view.unschedulable_reason, failed=view.failed, errors=errors)
    # an object this process holds no state for (a restart, a new leader): what the last decision kept
    before = STATE.policy.get(key) or recalled(status.get("autoscaler"), PolicyState())
    state, decision = decide(snap, before, policy_spec(spec.autoscaling))
    act = spec.autoscaling.activation
    activation_error = ""
    if act is not None and (decision.current == 0 or decision.desired == 0):
        assert prom is not None  # made above whenever an activation is set
        demand, activation_error = (None, prom) if isinstance(prom, str) else prom.value(act.query)
        decision = activate(decision, demand, act.threshold, spec.autoscaling.min_replicas)
        if demand is not None:
            metrics.ACTIVATION.labels(ns, name).set(demand)
    for pod, cost in deletion_costs(pod_dicts, readings.metrics).items():
        try:  # before any scale-down below, so the ReplicaSet removes the emptiest replica
            client.CoreV1Api(api).patch_namespaced_pod(pod, ns, {"metadata": {"annotations": {DELETION_COST: cost}}})
        except client.ApiException as exc:
            log.warning("could not set the deletion cost of pod %s/%s: %s", ns, pod, exc.reason)

    now = _now()
    dry = spec.autoscaling.dry_run
    fields: dict[str, Any] = {"recommendedReplicas": decision.desired}
    kv = mean_kv(readings.metrics)
    if kv is not None:
        fields["kvCacheUtilization"] = f"{kv:.0%}"
        metrics.KV_UTIL.labels(ns, name).set(kv)
    check = estimator_check(_estimated_blocks(status), readings.metrics)
    if check:
        fields["estimatorCheck"] = check
        metrics.ESTIMATOR_ERROR.labels(ns, name).set(check["errorPercent"] / 100)
    learned = _calibration(api, key, spec, status, readings.metrics, current_revision(pod_dicts), now)
    if learned is not None:
        fields["calibration"] = learned
    ok = not missing and (bool(readings.metrics) or not targets) and not activation_error
    errors = (*errors, activation_error) if activation_error else errors
    read = "; ".join(errors)[:900] or f"read {len(readings.metrics)} replica(s), {pending} starting"
    updates: list[tuple[str, bool | str, str, str]] = [
        (c.METRICS_AVAILABLE, ok, "MetricsRead" if ok else "MetricsMissing", read)]
    updates.append((c.SCALING_LIMITED, bool(decision.limited), "Limited" if decision.limited else "NotLimited",
                    decision.limited or "within bounds"))
    new_failures, failed_start = _failures(api, key, raw, status, pod_dicts, now, fields, updates)
    metrics.DESIRED.labels(ns, name).set(decision.desired)
    changes = decision.valid and decision.desired != current
    was = status.get("lastDecision") or {}
    if changes and dry and not was.get("applied", True) and was.get("desiredReplicas") == decision.desired \
            and was.get("replicas") == current:
        changes = False  # the same advice again: already recorded and announced
    lost = not decision.valid and bool(missing) and (was.get("valid", True) or was.get("reason") != decision.reason)
    if changes or lost:
        record = decision_record(decision, now, applied=changes and not dry)
        fields["lastDecision"] = record
        fields["history"] = with_history(status.get("history"), record)
    if changes and not dry:  # raises on failure: then neither the policy state nor the status moves
        client.CustomObjectsApi(api).patch_namespaced_custom_object_scale(
            GROUP, VERSION, ns, PLURAL, name, {"spec": {"replicas": decision.desired}}, field_manager=FIELD_MANAGER)
    if not (changes and not dry and decision.desired < current):
        # a scale-down that did not happen (dry run, or the activation kept a replica) starts no period
        state = replace(state, last_down_t=before.last_down_t)
    STATE.policy[key] = state  # committed once what it records (a scale-down time, panic) has happened
    kept = remembered(state)
    if kept != (status.get("autoscaler") or {}):
        fields["autoscaler"] = kept
    _write_status(api, ns, name, fields, updates, now, generation=int(meta.get("generation") or 0) or None,
                  trust_copy=not changes)  # after a scale write the watch's copy is older for sure
    if changes:
        reason = ("ScaleRecommended" if dry else "ScaledUp" if decision.direction == "up" else "ScaledDown")
        _post(body, [Event("Normal", reason, decision.reason)])
        metrics.DECISIONS.labels(decision.direction, str(not dry).lower()).inc()
    elif lost:
        _post(body, [Event("Warning", "MetricsUnavailable", decision.reason)])
    _act_on_replicas(body, status, fields, new_failures, failed_start, learned)


def watch_replicas(body: dict[str, Any], key: tuple[str, str]) -> None:
    """A fixed-size LLMDeployment's replicas, read as the autoscale pass reads an autoscaled one's: the
    blocks one replica of the current plan allocated (calibration), why any failed to start (Degraded,
    re-plan). Nothing is scaled."""
    raw, status = dict(body.get("spec", {})), dict(body.get("status") or {})
    spec = parse_spec(raw)
    if isinstance(spec, str) or spec.autoscaling.enabled or not status.get("plan"):
        return
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    api = api_client()
    pod_dicts = _pods_of(api, ns, name)
    current = {p["metadata"]["name"] for p in current_revision(pod_dicts)
               if (p["metadata"].get("annotations") or {}).get(PLAN_HASH_ANNOTATION) == status.get("planHash")}
    # one replica is enough (all of a plan report the same), and none once the plan is measured: a fixed-size
    # fleet is not scraped every pass for what it said once
    one = [] if (status.get("plan") or {}).get("kvCacheMeasured") else \
        [t for t in classify_pods(replica_groups(pod_dicts), spec.vllm.port).ready if t.pod in current][:1]
    now = _now()
    fields: dict[str, Any] = {}
    updates: list[tuple[str, bool | str, str, str]] = []
    learned = _calibration(api, key, spec, status, PodScrapeSource().read(one).metrics,
                           current_revision(pod_dicts), now) if one else None
    if learned is not None:
        fields["calibration"] = learned
    new_failures, failed_start = _failures(api, key, raw, status, pod_dicts, now, fields, updates)
    _write_status(api, ns, name, fields, updates, now, generation=int(meta.get("generation") or 0) or None)
    _act_on_replicas(body, status, fields, new_failures, failed_start, learned)


def _estimated_blocks(status: dict[str, Any]) -> int | None:
    """The plan's KV blocks as estimated: a measured plan's are the measurement, its record keeps the estimate."""
    plan = status.get("plan") or {}
    if not plan.get("kvCacheMeasured"):
        return plan.get("kvCacheBlocks")
    keys = ("gpu", "tensorParallelSize", "pipelineParallelSize", "quantization")
    layout = tuple(plan.get(k) for k in keys)
    return next((r.get("predictedBlocks") for r in status.get("calibration") or []
                 if tuple(r.get(k) for k in keys) == layout), None)


def _log_head(api: client.ApiClient, ns: str, pod: str) -> str | None:
    """The start of a running vLLM container's log, where it states its memory (None when unreadable)."""
    try:
        text: str = client.CoreV1Api(api).read_namespaced_pod_log(
            pod, ns, container=VLLM_CONTAINER, limit_bytes=LOG_LIMIT_BYTES, _request_timeout=LOG_READ_TIMEOUT_S)
        return text
    except Exception as exc:  # no RBAC, a timeout, bytes cut mid-character: the record goes without
        log.warning("could not read the log of %s/%s: %s", ns, pod, getattr(exc, "reason", None) or exc)
        return None


def _failures(api: client.ApiClient, key: tuple[str, str], raw: dict[str, Any], status: dict[str, Any],
              pod_dicts: list[dict[str, Any]], now: str, fields: dict[str, Any],
              updates: list[tuple[str, bool | str, str, str]]) -> tuple[list[str], dict[str, Any] | None]:
    """Failed replicas into ``fields`` and ``updates`` (Degraded, status.startupFailures); returns the failures
    not announced yet and the failed start of the current plan not on record yet."""
    ns = key[0]
    causes = _startup_causes(api, ns, key, pod_dicts) if STATE.settings.read_pod_logs else None
    found = pod_failures(pod_dicts, causes)
    failed_start = new_failure(current_revision(pod_dicts), causes or {}, status, spec_hash(raw), now,
                               served=STATE.serving.get(key, set())) if causes else None
    if failed_start is not None:
        kept = list(status.get("startupFailures") or [])[-(MAX_RECORDS - 1):]
        fields["startupFailures"] = [*kept, failed_start]
    updates.append((c.DEGRADED, bool(found), "ReplicaFailed" if found else "ReplicasHealthy",
                    "; ".join(found.values())[:900] or "no failed replica"))
    # announced once per failure: remembered here, and (across an operator restart) found in the condition
    before = (c.get_condition(status.get("conditions"), c.DEGRADED) or {}).get("message", "")
    reported = STATE.reported_failures.setdefault(key, set())
    new_failures = [line for k, line in found.items() if k not in reported and k not in before]
    reported.intersection_update(found)
    reported.update(found)
    return new_failures, failed_start


def _act_on_replicas(body: dict[str, Any], status: dict[str, Any], fields: dict[str, Any], new_failures: list[str],
                     failed_start: dict[str, Any] | None, learned: list[dict[str, Any]] | None) -> None:
    """Once status is written: announce new failures, and plan again with what a failed start or a
    measurement taught."""
    if new_failures:
        _post(body, [Event("Warning", "ReplicaFailed", "; ".join(new_failures)[:1000])])
    if failed_start is None and learned is None:
        return
    # the newest copy (a scale or a spec edit may have landed during this pass), with what was just written
    meta = body["metadata"]
    latest = _indexed(meta["namespace"], meta["name"]) or body
    fresh = {**latest, "status": {**(latest.get("status") or {}), **fields}}
    if failed_start is not None:
        _replan_after_failed_start(fresh, fresh["status"], fields["startupFailures"], failed_start)
    elif STATE.nodes is not None:  # the plan is made again with what was measured
        _reconcile(fresh, STATE.nodes)


def _calibration(api: client.ApiClient, key: tuple[str, str], spec: LLMDeploymentSpec, status: dict[str, Any],
                 replica_metrics: dict[str, ReplicaMetrics], pods: list[dict[str, Any]], now: str
                 ) -> list[dict[str, Any]] | None:
    """status.calibration with what a replica of the current plan reports, when that is news (and the
    shared ConfigMap updated with it); None when there is nothing new."""
    seen = observation(replica_metrics, pods, status.get("planHash"))
    if seen is None:
        return None
    # the same blocks for the same spec and plan as the last pass: already on record (an estimate per pass
    # and object is what a large fleet would pay for nothing)
    heard = (status.get("specHash"), status.get("planHash"), seen[1], seen[2])
    recorded = any((r.get("measuredBlocks"), r.get("blockSize")) == seen[1:] for r in status.get("calibration") or [])
    if STATE.measured.get(key) == heard and recorded:
        return None
    STATE.measured[key] = heard
    try:
        record = measure(spec, status["plan"], _catalog(), *seen, now)
    except (EstimatorError, ValueError, KeyError) as exc:  # the plan's layout no longer estimates: nothing to learn
        log.warning("no calibration from %s: %s", seen[0], exc)
        return None
    learned = updated(list(status.get("calibration") or []), record)
    if learned is not None and STATE.settings.read_pod_logs:  # ``record`` is the last of ``learned``
        record |= startup_report(_log_head(api, key[0], seen[0]))
    if learned is not None and STATE.shared is not None:
        try:
            STATE.shared.add(api, record)
        except Exception as exc:  # the API, an unreadable entry: the object's own status still keeps it
            metrics.ERRORS.labels("calibration").inc()
            log.warning("could not share the calibration of %s: %s", seen[0], getattr(exc, "reason", None) or exc)
    if learned is not None:
        log.info("calibration: %s", describe(record))
    return learned


def _replan_after_failed_start(body: dict[str, Any], status: dict[str, Any], records: list[dict[str, Any]],
                               failed: dict[str, Any]) -> None:
    """A replica of the current plan failed to start for a reason a plan can address: plan again with
    what it taught, unless this spec has been re-planned as often as it may be."""
    count = len(for_spec(records, failed["specHash"]))
    if count > MAX_STARTUP_REPLANS:
        _post(body, [Event("Warning", "StartupReplansExhausted", f"{count} plans failed to start for this spec; "
                           f"the last: {failed['message']}. The plan is kept; change the spec (maxModelLen, "
                           "placement) or the GPU catalog")])
        return
    if STATE.nodes is not None:
        _reconcile({**body, "status": {**status, "startupFailures": records}}, STATE.nodes)
