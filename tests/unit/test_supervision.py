"""Leadership, liveness and the periodic worker's supervision (no cluster)."""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from kvscale.autoscaler.sources import PodScrapeSource, Target
from kvscale.operator import handlers, metrics
from kvscale.operator.health import Liveness, judge
from kvscale.operator.leadership import Action, LeaseView, lease_action
from kvscale.operator.settings import OperatorSettings


def lease(holder: str | None, duration: int = 15) -> LeaseView:
    return LeaseView(holder=holder, duration_s=duration, renew_time="t", resource_version="1", transitions=0)


@pytest.mark.parametrize(("view", "unchanged", "want"), [
    (None, 0.0, Action.CREATE),
    (lease("me"), 100.0, Action.RENEW),
    (lease("other"), 3.0, Action.WAIT),
    (lease("other"), 14.9, Action.WAIT),
    (lease("other"), 15.0, Action.ACQUIRE),  # not renewed for a whole duration: its holder is gone
    (lease(None), 0.0, Action.ACQUIRE),  # released on a clean shutdown
    (lease("other", duration=1), 1.0, Action.ACQUIRE),
])
def test_lease_action(view: LeaseView | None, unchanged: float, want: Action) -> None:
    assert lease_action(view, "me", unchanged) is want


def live(**kw: Any) -> Liveness:
    base: dict[str, Any] = {"leading": True, "election_alive": True, "worker_started": True, "worker_alive": True,
                            "since_beat_s": 1.0, "interval_s": 15.0}
    return Liveness(**{**base, **kw})


def test_liveness_fails_when_work_stops_and_not_for_a_standby() -> None:
    assert judge(live()) == (True, "leading")
    assert judge(live(leading=False, worker_started=False, since_beat_s=None)) == (True, "standby")
    assert judge(live(election_alive=False))[0] is False
    assert judge(live(worker_alive=False)) == (False, "periodic worker died")
    ok, why = judge(live(since_beat_s=200.0))  # limit: 4 x 15 s + 60 s = 120 s
    assert not ok and "200 s" in why and "120 s" in why
    assert judge(live(since_beat_s=119.0))[0]


class _Exploding:
    """An index whose iteration fails, as a Kopf index can while it changes under another thread."""

    def values(self) -> Any:
        raise RuntimeError("dictionary changed size during iteration")


def test_a_failing_pass_is_counted_and_the_worker_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers.STATE, "settings", OperatorSettings(autoscale_interval_s=0.05))
    monkeypatch.setattr(handlers.STATE, "objects", _Exploding())
    before = metrics.PERIODIC_FAILURES.labels("pass")._value.get()
    handlers.STATE.stop.clear()
    worker = threading.Thread(target=handlers._worker, daemon=True)
    worker.start()
    try:
        time.sleep(0.5)
        assert worker.is_alive()
        assert metrics.PERIODIC_FAILURES.labels("pass")._value.get() - before >= 3  # every pass failed, none stopped it
        assert handlers.STATE.beat is not None and time.monotonic() - handlers.STATE.beat < 0.5
    finally:
        handlers.STATE.stop.set()
        worker.join(timeout=5)


def _server(delay: float) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(delay)
            body = b'vllm:kv_cache_usage_perc{engine="0"} 0.5\nvllm:num_requests_running{engine="0"} 1\n' \
                   b'vllm:num_requests_waiting{engine="0"} 0\n'
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_slow_pods_time_out_without_delaying_the_others() -> None:
    slow, fast = _server(5.0), _server(0.0)
    try:
        targets = [Target("ns", f"slow-{i}", "127.0.0.1", slow.server_address[1]) for i in range(4)]
        targets += [Target("ns", f"fast-{i}", "127.0.0.1", fast.server_address[1]) for i in range(4)]
        started = time.monotonic()
        got = PodScrapeSource(timeout_s=1.0).read(targets)
        elapsed = time.monotonic() - started
    finally:
        for s in (slow, fast):
            s.shutdown()
            s.server_close()
    assert sorted(got.metrics) == [f"fast-{i}" for i in range(4)]
    assert sorted(got.missing) == [f"slow-{i}" for i in range(4)]
    assert all("Timeout" in e for e in got.errors)
    assert elapsed < 3.0, f"four 1 s timeouts read one after another would take 4 s; took {elapsed:.1f} s"


ALLOWED = ("http://prometheus.monitoring.svc:9090", "https://thanos.example.com/api/prom", "http://127.0.0.1")


@pytest.mark.parametrize(("url", "ok"), [
    ("http://prometheus.monitoring.svc:9090", True),
    ("http://prometheus.monitoring.svc:9090/", True),
    ("https://thanos.example.com/api/prom/tenant-a", True),
    ("http://127.0.0.1:41234", True),  # an entry without a port allows any
    ("http://prometheus.monitoring.svc:9091", False),  # another port
    ("https://prometheus.monitoring.svc:9090", False),  # another scheme
    ("https://thanos.example.com/api/prometheus", False),  # a sibling path, not under the entry's
    ("http://prometheus.monitoring.svc:9090@evil.example/", False),  # userinfo, then another host
    ("http://evil.example/?u=http://prometheus.monitoring.svc:9090", False),
    ("file:///etc/passwd", False),
    ("http://169.254.169.254/latest/meta-data", False),  # cloud metadata: never unless listed
])
def test_prometheus_urls_must_be_allowed_by_the_operator(url: str, ok: bool) -> None:
    from kvscale.operator.prometheus_access import url_error

    error = url_error(url, ALLOWED)
    assert (error is None) is ok, error
    if not ok:
        assert error is not None and "spec.autoscaling.metrics.prometheusURL" in error


def test_no_prometheus_is_allowed_until_the_operator_lists_one() -> None:
    from kvscale.operator.prometheus_access import url_error

    error = url_error("http://prometheus.monitoring.svc:9090", ())
    assert error is not None and "KVSCALE_PROMETHEUS_URLS" in error


def test_secrets_opt_in_and_tokens_stay_out_of_reprs() -> None:
    from kvscale.autoscaler.sources import PrometheusSource
    from kvscale.operator.prometheus_access import SECRET_OPT_IN, secret_error

    assert secret_error("tok", {SECRET_OPT_IN: "true"}) is None
    assert "lacks the label" in (secret_error("tok", {"app": "x"}) or "")
    assert secret_error("tok", None) is not None
    assert "s3cr3t" not in repr(PrometheusSource(url="http://p:9090", bearer_token="s3cr3t"))


class _Index(dict):  # type: ignore[type-arg]
    """What Kopf's index looks like to the worker: key -> a store of values."""


def test_a_pass_forgets_what_it_held_for_deleted_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    kept, gone = ("ns", "kept"), ("ns", "gone")
    body = {"metadata": {"namespace": "ns", "name": "kept"}, "spec": {}, "status": {}}
    monkeypatch.setattr(handlers.STATE, "objects", _Index({kept: [body]}))
    for table in ("policy", "serving", "applied", "reconciled", "status_known"):
        monkeypatch.setattr(handlers.STATE, table, {kept: object(), gone: object()})
    monkeypatch.setattr(handlers.STATE, "locks", {kept: threading.Lock(), gone: threading.Lock()})
    seen: list[str] = []
    monkeypatch.setattr(handlers, "_periodic", lambda b, replan: seen.append(b["metadata"]["name"]))
    with ThreadPoolExecutor(2) as pool:
        handlers._pass(pool, replan=False)
    assert seen == ["kept"]
    for table in ("policy", "serving", "applied", "reconciled", "status_known", "locks"):
        assert set(getattr(handlers.STATE, table)) == {kept}, table


def test_forgetting_spares_an_object_created_since_the_pass_began_and_a_lock_in_use(
        monkeypatch: pytest.MonkeyPatch) -> None:
    new, gone_busy = ("ns", "new"), ("ns", "busy")
    body = {"metadata": {"namespace": "ns", "name": "new"}, "spec": {}, "status": {}}
    monkeypatch.setattr(handlers.STATE, "objects", _Index({new: [body]}))  # indexed after `present` was taken
    monkeypatch.setattr(handlers.STATE, "policy", {new: object()})
    held = threading.Lock()
    held.acquire()
    monkeypatch.setattr(handlers.STATE, "locks", {new: threading.Lock(), gone_busy: held})
    handlers._forget_deleted(present=set())
    assert set(handlers.STATE.policy) == {new}
    assert set(handlers.STATE.locks) == {new, gone_busy}
    held.release()


def test_the_watch_copy_is_trusted_only_once_it_includes_kvscales_own_last_write(
        monkeypatch: pytest.MonkeyPatch) -> None:
    key = ("ns", "m")
    calls: list[dict[str, Any] | None] = []
    # the version each call leaves known: a write's, or that of a read which found nothing to change
    versions = iter(["7", "7", "9", "9"])

    def fake_update_status(*_: Any, current: dict[str, Any] | None, known: Any, **__: Any) -> bool:
        calls.append(current)
        known(next(versions))
        return True

    def copy(rv: str) -> dict[str, Any]:
        return {"apiVersion": "kvscale.io/v1alpha1", "kind": "LLMDeployment",
                "metadata": {"namespace": "ns", "name": "m", "resourceVersion": rv}, "spec": {}, "status": {}}

    index = _Index({key: [copy("5")]})
    monkeypatch.setattr(handlers.STATE, "objects", index)
    monkeypatch.setattr(handlers.STATE, "status_known", {})
    monkeypatch.setattr(handlers.STATE, "known_seen", set())
    monkeypatch.setattr(handlers, "update_status", fake_update_status)

    def write() -> dict[str, Any] | None:
        handlers._write_status(None, "ns", "m", {}, [], "now")  # type: ignore[arg-type]
        return calls[-1]

    def watch_delivers(rv: str) -> None:
        indexed = asyncio.run(handlers.llmdeployments(body=copy(rv)))
        index[key] = [indexed[key]]

    assert write() is None  # nothing known yet: read first (and the write produced "7")
    assert write() is None  # the copy is still "5", older than kvscale's own write: read again
    watch_delivers("7")
    watch_delivers("8")  # another client changed it after: newer than kvscale's write, so it includes it
    assert write() is not None and calls[-1]["metadata"]["resourceVersion"] == "8"  # type: ignore[index]
    assert write() is None  # that wrote "9": "8" is now older than kvscale's last write
