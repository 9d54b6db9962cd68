"""The KV-cache autoscaling policy: ``decide(snapshot, state, spec) -> (state, Decision)``. Pure.

Replicas follow memory pressure. The recommendation is the replica count that would bring
the observed KV-cache load to the target (``ceil(sum of per-replica usage / target)``),
raised when requests queue or get preempted. Like the HPA and Knative's KPA, scale-ups take
the smallest recommendation of a short window, scale-downs the largest of a long one, so
the count never drops below what recent load needed and never reverses inside a window.
Panic mode (a burst that needs at least twice the replicas, or a nearly full cache with a
queue) scales up at once and forbids scale-down for a stable window. Bursts shorter than a
cold start cannot be chased; once they recur, the capacity they needed is the forecast and is
kept. Replicas still starting are not removed while the ready ones are all needed. Missing data holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from . import window
from .snapshot import Snapshot

PANIC_KV = 0.95  # a replica this full with a queue is about to preempt
QUEUE_PERSIST_S = 10.0  # a queue with free KV (batch-size bound, or a burst being admitted) must last this long
BURST_GAP_S = 60.0  # queue pressure this far apart is two bursts, not one seen again


@dataclass(frozen=True)
class PolicySpec:
    min_replicas: int = 1
    max_replicas: int = 4
    target_kv: float = 0.7
    max_waiting_per_replica: float = 2.0
    max_preemptions_per_s: float = 0.1
    scale_up_window_s: float = 0.0
    scale_down_window_s: float = 300.0
    max_scale_up_step: int = 4
    panic_window_s: float = 60.0  # how long panic forbids scale-down
    max_queue_s: float | None = None  # queue-time objective; None: latency is not a signal
    max_slow_fraction: float = 0.01  # share of requests allowed to queue longer
    # queue-time shares are taken over this long: at a 1 % allowance and a few hundred requests a minute,
    # two minutes hold so few slow requests that chance alone crosses the line now and then
    queue_window_s: float = 300.0
    min_queue_samples: int = 100  # fewer finished requests in the window say nothing
    queue_settle_s: float = 30.0  # queue times are reported at finish: after new replicas, wait for fresh ones
    max_scale_down_fraction: float = 0.5  # most of the replicas removed at once
    scale_down_period_s: float = 0.0  # least time between two scale-downs
    # bursts the cold start cannot catch come back: once queue-driven growth recurs within this long,
    # the count it reached is kept until this long after the latest episode (0: off)
    burst_memory_s: float = 0.0


@dataclass(frozen=True)
class PolicyState:
    recommendations: tuple[window.Sample, ...] = ()
    preemption_totals: dict[str, float] = field(default_factory=dict)
    queue_totals: dict[str, tuple[float, float]] = field(default_factory=dict)  # pod -> (requests, slow)
    last_t: float | None = None
    panic_until: float | None = None
    queue_since: float | None = None
    first_t: float | None = None  # no scale-down before one full window of observations
    starting_t: float | None = None  # last time a replica was still starting
    queue_samples: tuple[tuple[float, float, float], ...] = ()  # (t, requests, slow) per decision
    last_down_t: float | None = None
    queue_step: tuple[int, float] | None = None  # (replicas, slow share) at the last queue-time scale-up
    fleet: tuple[int, float] | None = None  # (measured replicas, since when)
    bursts: tuple[float, ...] = ()  # when episodes of queue-driven growth began
    pressure_t: float | None = None  # last time queues asked for more replicas than memory
    burst_sizes: tuple[window.Sample, ...] = ()  # replica counts decided while queues drove growth
    too_small: tuple[int, float] | None = None  # (replicas, when) that last missed the queue-time objective


@dataclass(frozen=True)
class Decision:
    valid: bool
    current: int
    desired: int
    reason: str
    panic: bool = False
    limited: str = ""  # why the count is held below what load asks for

    @property
    def direction(self) -> str:
        return "up" if self.desired > self.current else "down" if self.desired < self.current else "none"


def _preemption_rate(snap: Snapshot, state: PolicyState) -> tuple[float, dict[str, float]]:
    totals = {pod: m.preemptions_total for pod, m in snap.ready.items()}
    if state.last_t is None or snap.now <= state.last_t:
        return 0.0, totals
    dt = snap.now - state.last_t
    delta = sum(max(0.0, v - state.preemption_totals[p]) for p, v in totals.items() if p in state.preemption_totals)
    return delta / dt, totals


def _queue_times(snap: Snapshot, state: PolicyState, spec: PolicySpec
                 ) -> tuple[float, float, dict[str, tuple[float, float]], tuple[tuple[float, float, float], ...]]:
    """(requests, share that queued longer than the objective) over the queue window, from the histograms."""
    if spec.max_queue_s is None:
        return 0.0, 0.0, {}, ()
    totals = {pod: m.queue_time_counts(spec.max_queue_s) for pod, m in snap.ready.items()}
    count = slow = 0.0
    for pod, (c, s) in totals.items():
        if pod in state.queue_totals:
            c0, s0 = state.queue_totals[pod]
            if c >= c0:  # a restarted server resets its counters
                count += c - c0
                slow += max(0.0, s - s0)
    samples = tuple(x for x in state.queue_samples if snap.now - x[0] < spec.queue_window_s)
    samples += ((snap.now, count, slow),)
    done = sum(x[1] for x in samples)
    return done, (sum(x[2] for x in samples) / done if done else 0.0), totals, samples


def _clamp(n: int, spec: PolicySpec) -> int:
    return max(spec.min_replicas, min(spec.max_replicas, n))


def decide(snap: Snapshot, state: PolicyState, spec: PolicySpec) -> tuple[PolicyState, Decision]:
    now, current = snap.now, snap.replicas
    keep = max(spec.scale_down_window_s, spec.scale_up_window_s, spec.panic_window_s, spec.burst_memory_s) + 1.0
    if not snap.ready:
        if current == 0:
            return state, Decision(True, 0, 0, "scaled to zero: no replica to measure")
        if snap.missing:
            why = f"no metrics from {len(snap.missing)} ready replica(s) ({', '.join(snap.missing[:3])}); holding"
        else:
            why = (f"no ready replica yet ({snap.pending} starting, {snap.failed} failed, "
                   f"{snap.unschedulable} unschedulable); holding")
        return state, Decision(False, current, current, why)

    n = snap.observed
    total_kv = sum(m.kv_cache_usage for m in snap.ready.values())
    avg_kv = total_kv / n
    waiting = sum(m.waiting for m in snap.ready.values())
    running = sum(m.running for m in snap.ready.values())
    rate, totals = _preemption_rate(snap, state)
    done, slow_share, queue_totals, queue_samples = _queue_times(snap, state, spec)

    reasons = []
    rec = math.ceil(total_kv / spec.target_kv - 1e-9)
    rec_kv = rec
    reasons.append(f"KV utilization {avg_kv:.2f} vs target {spec.target_kv:.2f} on {n} replica(s) -> {rec}")
    queued = waiting / n > spec.max_waiting_per_replica
    queue_since = (state.queue_since if state.queue_since is not None else now) if queued else None
    if queued and avg_kv >= spec.target_kv and running > 0:
        # memory-bound queue: waiting requests will need about as much KV as the running ones hold
        queue_rec = math.ceil(total_kv * (running + waiting) / running / spec.target_kv - 1e-9)
        if queue_rec > rec:
            rec = queue_rec
            reasons.append(f"{waiting:.0f} waiting behind a full cache -> {rec}")
    elif queued and queue_since is not None and now - queue_since >= QUEUE_PERSIST_S:
        # a lasting queue with free KV is compute- or batch-bound: add capacity in proportion to it
        queue_rec = n + math.ceil(waiting / max(1.0, running / n))
        if queue_rec > rec:
            rec = queue_rec
            reasons.append(f"{waiting:.0f} requests queued for {now - queue_since:.0f}s -> {rec}")
    queue_ask = rec  # what queues (not memory, not preemptions) ask for
    if rate / n > spec.max_preemptions_per_s:
        pre_rec = n + max(1, math.ceil(n * 0.5))
        if pre_rec > rec:
            rec = pre_rec
            reasons.append(f"{rate:.2f} preemptions/s -> {rec}")
    starting_t = now if snap.pending else state.starting_t
    # the fleet is the replicas serving (a failed scrape does not change it); the one found at the
    # first decision has no change to settle from
    size = n + len(snap.missing)
    fleet = (size, -math.inf) if state.fleet is None else state.fleet if state.fleet[0] == size else (size, now)
    on_fleet = [x for x in queue_samples if x[0] >= fleet[1] + spec.queue_settle_s]
    fresh = sum(x[1] for x in on_fleet)
    measured = fresh >= spec.min_queue_samples
    # growth is judged on this fleet's own requests: a burst's slow requests stay in the window after
    # it ends and would otherwise grow the fleet step after step
    up_share = sum(x[2] for x in on_fleet) / fresh if fresh else 0.0
    # so is whether it can shrink, once it has served enough to go by
    down_share = up_share if fresh and measured else slow_share
    # queue times from a larger fleet say nothing about this one: measure it before shrinking it
    unmeasured = done >= spec.min_queue_samples and not measured and now - fleet[1] < spec.queue_window_s
    settled = starting_t is None or now - starting_t >= spec.queue_settle_s
    # over the allowance by more than sampling noise (two binomial standard deviations)
    p_ok = spec.max_slow_fraction
    noise = 2 * math.sqrt(p_ok * (1 - p_ok) / fresh) if fresh else 0.0
    over = up_share > p_ok + noise
    queue_step = None if measured and up_share <= p_ok else state.queue_step
    too_small = state.too_small
    if measured and over and settled:
        if (queue_step is not None and n > queue_step[0] and up_share >= 0.75 * queue_step[1]
                and up_share < 5 * spec.max_slow_fraction):
            # more replicas did not shorten the queue (requests stuck behind one long prefill): stop there
            rec = max(rec, n)
            reasons.append(f"{up_share:.1%} queued over {spec.max_queue_s:g}s on {n} replicas, "
                           f"{queue_step[1]:.1%} on {queue_step[0]}: more replicas do not help -> {rec}")
        else:
            # requests wait for compute even where memory is free (prefill bursts, long prompts)
            slo_rec = n + max(1, math.ceil(n * (0.5 if up_share > 10 * spec.max_slow_fraction else 0.25)))
            if up_share > 2 * (p_ok + noise):
                too_small = (n, now)  # clearly too few, not a borderline reading: remember it
            if slo_rec > rec:
                rec = slo_rec
                queue_step = (n, up_share)
                reasons.append(f"{up_share:.1%} of {fresh:.0f} requests queued over {spec.max_queue_s:g}s "
                               f"-> {rec}")
            queue_ask = max(queue_ask, slo_rec)
    elif down_share > spec.max_slow_fraction / 2 and rec < n:
        rec = n  # the objective is being missed now and then: no fewer replicas
        reasons.append(f"{down_share:.1%} of requests queued over {spec.max_queue_s:g}s -> no scale-down")
    # a queue is partly backlog that drains once capacity arrives: grow on it by at most half per decision
    capped = max(rec_kv, n + max(1, math.ceil(n / 2)))
    if rec > capped:
        rec = capped
        reasons.append(f"queue-driven growth capped at {rec}")
    if snap.pending and rec > max(rec_kv, current):
        # capacity is already starting: a queue that builds meanwhile is backlog it will absorb
        rec = max(rec_kv, current)
        reasons.append(f"{snap.pending} replica(s) starting: holding queue-driven growth at {rec}")
    # replicas without metrics (vLLM still loading, or gone) carry unknown load: they never justify
    # more replicas, and block any scale-down below
    rec = max(rec, 0)

    # burst memory: episodes of queue-driven growth that recur within burst_memory_s of each other are
    # expected back, so the capacity they grew to is kept (and restored) for that long after the last
    memory = spec.burst_memory_s
    bursts = tuple(b for b in state.bursts if now - b <= 2 * memory)
    pressure_t = state.pressure_t
    pressure = queue_ask > max(rec_kv, n)
    if pressure:
        if pressure_t is None or now - pressure_t > BURST_GAP_S:
            bursts += (now,)  # a new episode, not the same queue seen again
        pressure_t = now
    recurring = (memory > 0 and len(bursts) >= 2 and now - bursts[-1] <= memory
                 and bursts[-1] - bursts[-2] <= memory)
    peak = int(window.maximum(state.burst_sizes, now, memory) or 0) if recurring else 0
    if pressure and peak > rec:
        # the burst is back: the last ones' size is the forecast, as waiting for it costs a cold start
        rec = peak
        reasons.append(f"queue burst again within {memory:.0f}s: back to the {rec} replicas the last ones grew to")
    bursting = rec >= 2 * max(1, n) or any(m.kv_cache_usage >= PANIC_KV and m.waiting > 0
                                          for m in snap.ready.values())
    panic_until = now + spec.panic_window_s if bursting else state.panic_until
    panic = panic_until is not None and now < panic_until

    first_t = state.first_t if state.first_t is not None else now
    recs = window.append(state.recommendations, now, float(rec), keep)
    up = rec if (spec.scale_up_window_s <= 0 or bursting) else int(window.minimum(recs, now, spec.scale_up_window_s)
                                                                       or rec)
    down = int(window.maximum(recs, now, spec.scale_down_window_s) or rec)
    if recurring and peak > down:
        down = peak
        reasons.append(f"queue bursts {bursts[-1] - bursts[-2]:.0f}s apart, the last {now - bursts[-1]:.0f}s ago: "
                       f"keeping the {peak} they grew to for {memory:.0f}s")
    if too_small is not None and now - too_small[1] < max(spec.scale_down_window_s, memory) \
            and down <= too_small[0]:
        down = too_small[0] + 1
        reasons.append(f"{too_small[0]} replica(s) missed the queue-time objective {now - too_small[1]:.0f}s ago: "
                       f"not below {down}")
    new_state = replace(state, first_t=first_t, recommendations=recs, preemption_totals=totals, last_t=now,
                        queue_totals=queue_totals or state.queue_totals,
                        starting_t=starting_t, queue_step=queue_step, fleet=fleet, bursts=bursts,
                        pressure_t=pressure_t, too_small=too_small,
                        queue_samples=queue_samples,
                        panic_until=panic_until,
                        queue_since=queue_since)

    limited = ""
    if snap.unschedulable:
        limited = (f"{snap.unschedulable} replica(s) cannot be scheduled"
                   + (f": {snap.unschedulable_reason}" if snap.unschedulable_reason else ""))
    if up > current:
        desired = min(up, current + spec.max_scale_up_step)
        if snap.unschedulable:
            desired = current  # more replicas would not schedule either
            limited += "; not adding more"
        elif desired < up:
            limited = f"step limited to +{spec.max_scale_up_step}"
    elif down < current and snap.pending and down >= n:
        # the starting replicas were asked for by load they have not yet been measured against (a queue
        # admitted meanwhile grows its KV as it decodes): while every ready replica is still needed,
        # removing one before it serves throws its cold start away and the next scale-up pays it again
        desired = current
        reasons.append(f"{snap.pending} replica(s) starting and all {n} ready ones needed -> no scale-down yet")
    elif down < current and unmeasured:
        desired = current
        reasons.append(f"queue times on {n} replicas from {fresh:.0f} of {spec.min_queue_samples} requests "
                       "so far -> no scale-down yet")
    elif (down < current and not panic and not snap.missing and now - first_t >= spec.scale_down_window_s
          and (state.last_down_t is None or now - state.last_down_t >= spec.scale_down_period_s)):
        # at most a fraction per step; idle -> zero
        desired = 0 if down == 0 else max(down, current - max(1, int(current * spec.max_scale_down_fraction)))
    else:
        desired = current
    clamped = _clamp(desired, spec)
    if clamped < desired and not limited:
        limited = f"at maxReplicas {spec.max_replicas}"
    desired = clamped

    reason = "; ".join(reasons)
    if desired > current:
        reason = f"scale up {current} -> {desired}: {reason}" + (" (panic)" if bursting else "")
    elif desired < current:
        reason = f"scale down {current} -> {desired}: {reason}; {spec.scale_down_window_s:.0f}s window below"
    else:
        held = "panic window" if panic and down < current else (
            f"stabilization window wants {down}" if down > rec else "steady")
        reason = f"hold {current}: {reason} ({held})"
    if limited:
        reason += f" [{limited}]"
    if desired < current:
        new_state = replace(new_state, last_down_t=now)
    if memory and pressure:
        new_state = replace(new_state, burst_sizes=window.append(state.burst_sizes, now, float(desired), memory))
    return new_state, Decision(True, current, desired, reason, panic=panic, limited=limited)


def activate(decision: Decision, demand: float | None, threshold: float, min_replicas: int) -> Decision:
    """Zero replicas and back, on a demand signal that exists at zero (pure).

    At zero no replica reports load: the activation value decides alone (0 -> 1 above the threshold).
    Above zero the policy decides, but never to zero while demand is above the threshold or unknown,
    so scale to zero needs positive evidence that nobody is asking.
    """
    if decision.current == 0:
        if demand is None:
            return Decision(False, 0, 0, "activation query failed: holding at zero")
        if demand > threshold:
            return Decision(True, 0, max(1, min_replicas),
                            f"scale up 0 -> {max(1, min_replicas)}: activation {demand:g} > {threshold:g}")
        return Decision(True, 0, 0, f"activation {demand:g} <= {threshold:g}: staying at zero")
    if decision.desired == 0 and (demand is None or demand > threshold):
        why = "activation query failed" if demand is None else f"activation {demand:g} > {threshold:g}"
        return replace(decision, desired=1, reason=f"{decision.reason}; {why}: keeping one replica")
    return decision
