"""A fleet of simulated replicas behind a router, scaled by a policy on a fixed tick.

kvscale's own policy runs here unchanged (the same ``decide`` the operator calls); baselines
implement the same small interface. Replicas start after a cold-start delay; removed replicas
drain (no new requests) and stop counting GPU time once idle.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..autoscaler.policy import PolicySpec, PolicyState, decide
from ..autoscaler.snapshot import ReplicaMetrics, Snapshot
from .engine import Replica, ReplicaModel, Seq
from .traces import Request


class ScalingPolicy(Protocol):
    name: str

    def desired(self, snap: Snapshot) -> int: ...


@dataclass
class KVScalePolicy:
    spec: PolicySpec
    name: str = "kvscale"
    state: PolicyState = field(default_factory=PolicyState)

    def desired(self, snap: Snapshot) -> int:
        self.state, d = decide(snap, self.state, self.spec)
        return d.desired


@dataclass
class StaticPolicy:
    replicas: int
    name: str = "static-peak"

    def desired(self, snap: Snapshot) -> int:
        return self.replicas


@dataclass
class QueueLengthPolicy:
    """vLLM production-stack's KEDA default: keep num_requests_waiting per replica at a target."""

    target_waiting: float = 5.0
    min_replicas: int = 1
    max_replicas: int = 8
    cooldown_s: float = 300.0
    name: str = "queue-length (KEDA)"
    _high_since: float = field(default=-1e18)

    def desired(self, snap: Snapshot) -> int:
        waiting = sum(m.waiting for m in snap.ready.values())
        want = max(self.min_replicas, math.ceil(waiting / self.target_waiting))
        if want >= snap.replicas or waiting > 0:
            self._high_since = snap.now
        if want < snap.replicas and snap.now - self._high_since < self.cooldown_s:
            want = snap.replicas  # KEDA/HPA scale-down cooldown
        return min(self.max_replicas, max(want, self.min_replicas if want >= snap.replicas else want))


@dataclass
class KVThresholdPolicy:
    """llm-d WVA-style thresholds: +1 at KV >= 0.8 or queue >= 5, -1 when well below for a while."""

    kv_up: float = 0.8
    queue_up: float = 5.0
    kv_down: float = 0.4
    down_after_s: float = 300.0
    min_replicas: int = 1
    max_replicas: int = 8
    name: str = "kv-threshold (WVA)"
    _low_since: float | None = None

    def desired(self, snap: Snapshot) -> int:
        if not snap.ready:
            return snap.replicas
        kv = max(m.kv_cache_usage for m in snap.ready.values())
        queue = max(m.waiting for m in snap.ready.values())
        if kv >= self.kv_up or queue >= self.queue_up:
            self._low_since = None
            return min(self.max_replicas, snap.replicas + 1)
        if kv < self.kv_down and queue == 0:
            self._low_since = self._low_since if self._low_since is not None else snap.now
            if snap.now - self._low_since >= self.down_after_s:
                self._low_since = snap.now
                return max(self.min_replicas, snap.replicas - 1)
        else:
            self._low_since = None
        return snap.replicas


@dataclass
class SimResult:
    policy: str
    finished: list[Seq]
    unfinished: int
    gpu_seconds: float
    preemptions: int
    scale_events: int
    timeline: list[tuple[float, int, float]]  # (t, replicas counted for cost, mean KV usage)


@dataclass
class ClusterSim:
    model: ReplicaModel
    gpus_per_replica: int
    policy: ScalingPolicy
    cold_start_s: float = 120.0
    tick_s: float = 15.0
    initial_replicas: int = 1
    max_replicas: int = 64
    router: str = "least-kv"
    gpu_budget: int | None = None  # GPUs of this type in the cluster; replicas beyond it stay unschedulable
    replicas: list[Replica] = field(default_factory=list)
    _counter: int = 0
    _unscheduled: int = 0  # replicas asked for that no GPUs are free for

    def _free_slots(self) -> int:
        if self.gpu_budget is None:
            return 1 << 30
        return max(0, self.gpu_budget // self.gpus_per_replica - len(self.replicas))  # draining ones still hold

    def _add(self, now: float, ready_at: float) -> None:
        self._counter += 1
        r = Replica(self.model, name=f"r{self._counter}", now=now, ready_at=ready_at)
        self.replicas.append(r)

    def _route(self, seq: Seq, now: float, rr: list[int]) -> bool:
        ready = [r for r in self.replicas if r.ready_at <= now and not r.draining]
        if not ready:
            return False
        if self.router == "round-robin":
            rr[0] += 1
            target = ready[rr[0] % len(ready)]
        else:
            target = min(ready, key=lambda r: (r.kv_usage + len(r.waiting) * 0.05, len(r.running)))
        target.submit(seq)
        return True

    def _snapshot(self, now: float, desired: int) -> Snapshot:
        ready = {r.name: ReplicaMetrics(r.kv_usage, float(len(r.running)), float(len(r.waiting)),
                                        float(r.preemptions), queue_time_buckets=r.queue_time_buckets)
                 for r in self.replicas if r.ready_at <= now and not r.draining}
        pending = sum(1 for r in self.replicas if r.ready_at > now and not r.draining)
        why = f"0/{self.gpu_budget} GPUs free: Insufficient nvidia.com/gpu" if self._unscheduled else ""
        return Snapshot(now=now, replicas=desired, ready=ready, pending=pending, unschedulable=self._unscheduled,
                        unschedulable_reason=why)

    def run(self, trace: list[Request], on_tick: Callable[[float], None] | None = None) -> SimResult:
        for _ in range(self.initial_replicas):
            self._add(0.0, 0.0)
        backlog: list[Seq] = []
        rr = [0]
        gpu_s = 0.0
        scale_events = 0
        timeline: list[tuple[float, int, float]] = []
        end = (trace[-1].arrival_s if trace else 0.0) + 1800.0
        events: list[tuple[float, int, int]] = [(r.arrival_s, 1, i) for i, r in enumerate(trace)]
        t = 0.0
        while t <= end:
            events.append((t, 0, -1))
            t += self.tick_s
        heapq.heapify(events)
        last = 0.0
        seqs_total = len(trace)
        while events:
            now, kind, idx = heapq.heappop(events)
            for r in self.replicas:
                r.advance(now)
            counted = sum(1 for r in self.replicas if not (r.draining and r.idle))
            gpu_s += counted * self.gpus_per_replica * (now - last)
            last = now
            for r in [r for r in self.replicas if r.draining and r.idle]:
                self._retired.extend(r.finished)
                self._retired_preemptions += r.preemptions
                self.replicas.remove(r)
            if kind == 1:
                req = trace[idx]
                seq = Seq(idx, req.arrival_s, req.input_tokens, req.output_tokens)
                if not self._route(seq, now, rr):
                    backlog.append(seq)
                continue
            while backlog and self._route(backlog[0], now, rr):
                backlog.pop(0)
            while self._unscheduled and self._free_slots():  # GPUs freed by drained replicas
                self._unscheduled -= 1
                self._add(now, now + self.cold_start_s)
            active = [r for r in self.replicas if not r.draining]
            current = len(active) + self._unscheduled
            want = max(0, min(self.max_replicas, self.policy.desired(self._snapshot(now, current))))
            if want < current and self._unscheduled:  # give up on the unplaced ones first
                drop = min(self._unscheduled, current - want)
                self._unscheduled -= drop
                current -= drop
            if want > current:
                for _ in range(want - current):
                    if self._free_slots():
                        self._add(now, now + self.cold_start_s)
                    else:
                        self._unscheduled += 1
                scale_events += 1
            elif want < len(active):
                # drain the emptiest (not-yet-ready ones first)
                order = sorted(active, key=lambda r: (r.ready_at <= now, r.used_blocks + len(r.waiting)))
                for r in order[: len(active) - want]:
                    r.draining = True
                    for s in list(r.waiting):  # queued work moves to a replica that stays
                        r.waiting.remove(s)
                        if not self._route(s, now, rr):
                            backlog.append(s)
                scale_events += 1
            ready = [r for r in self.replicas if r.ready_at <= now]
            kv = sum(r.kv_usage for r in ready) / len(ready) if ready else 0.0
            timeline.append((now, len([r for r in self.replicas if not r.draining]), kv))
            if now >= (trace[-1].arrival_s if trace else 0.0) and all(r.idle for r in self.replicas) \
                    and not backlog:
                break
            if on_tick:
                on_tick(now)
        finished = [s for r in self.replicas for s in r.finished] + self._retired
        return SimResult(self.policy.name, finished, seqs_total - len(finished), gpu_s,
                         sum(r.preemptions for r in self.replicas) + self._retired_preemptions, scale_events,
                         timeline)

    _retired: list[Seq] = field(default_factory=list)
    _retired_preemptions: int = 0
