"""The autoscaling policy on a fake clock (minutes pass instantly)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from kvscale.autoscaler.policy import Decision, PolicySpec, PolicyState, decide
from kvscale.autoscaler.snapshot import ReplicaMetrics, Snapshot

SPEC = PolicySpec(min_replicas=1, max_replicas=6, target_kv=0.7, scale_down_window_s=300, panic_window_s=60)


def snap(now: float, replicas: int, kv: list[float], waiting: float = 0, preempt: float = 0,
         **kw: object) -> Snapshot:
    ready = {f"p{i}": ReplicaMetrics(kv_cache_usage=u, running=4, waiting=waiting / max(1, len(kv)),
                                     preemptions_total=preempt) for i, u in enumerate(kv)}
    return Snapshot(now=now, replicas=replicas, ready=ready, **kw)  # type: ignore[arg-type]


def run(steps: list[Snapshot], spec: PolicySpec = SPEC) -> list[Decision]:
    state, out = PolicyState(), []
    for s in steps:
        state, d = decide(s, state, spec)
        out.append(d)
    return out


def test_scales_up_by_ratio_when_kv_exceeds_target() -> None:
    (d,) = run([snap(0, 1, [0.9])])
    assert d.valid and d.desired == 2 and "scale up 1 -> 2" in d.reason


def test_holds_at_target() -> None:
    (d,) = run([snap(0, 2, [0.65, 0.6])])
    assert d.desired == 2 and d.reason.startswith("hold")


def test_scale_down_waits_for_the_stabilization_window() -> None:
    steps = [snap(0, 3, [0.9, 0.9, 0.2])] + [snap(t, 3, [0.1, 0.1, 0.1]) for t in range(15, 301, 15)]
    ds = run(steps)
    assert all(d.desired >= 3 for d in ds[:-1])  # high recommendation at t=0 still inside the window
    after = run([*steps, snap(316, 3, [0.1, 0.1, 0.1])])[-1]
    assert after.desired == 2 and "scale down" in after.reason  # at most halves per step: 3 -> 2


def test_never_below_what_current_load_needs() -> None:
    steps = [snap(t, 4, [0.6, 0.6, 0.6, 0.6]) for t in range(0, 700, 30)]
    assert all(d.desired == 4 for d in run(steps))  # 2.4 / 0.7 -> 4


def test_no_direction_change_inside_a_window() -> None:
    steps = [snap(0, 1, [0.95]), snap(30, 2, [0.3, 0.3]), snap(60, 2, [0.1, 0.1]), snap(200, 2, [0.05, 0.05])]
    ds = run(steps)
    assert ds[0].direction == "up" and all(d.direction == "none" for d in ds[1:])


def test_queue_behind_a_full_cache_sizes_by_kv_demand() -> None:
    (d,) = run([snap(0, 2, [0.9, 0.9], waiting=16)])  # 8 running hold 1.8; 24 would need 5.4 -> /0.7 -> 8
    assert d.desired == 3 and "waiting behind a full cache" in d.reason  # grows by at most half per decision


def test_queue_with_free_cache_must_persist() -> None:
    ds = run([snap(0, 1, [0.3], waiting=12), snap(5, 1, [0.3], waiting=12), snap(12, 1, [0.3], waiting=12)])
    assert [d.desired for d in ds][:2] == [1, 1] and ds[2].desired >= 2  # a burst being admitted is not a
    assert "queued for 12s" in ds[2].reason  # reason to scale; a lasting queue is


def test_queue_growth_waits_while_replicas_start() -> None:
    (d,) = run([snap(0, 3, [1.0], waiting=30, pending=2)])
    assert d.desired == 3


def test_preemptions_trigger_scale_up() -> None:
    ds = run([snap(0, 2, [0.6, 0.6], preempt=0), snap(10, 2, [0.6, 0.6], preempt=10)])
    assert ds[1].desired == 3 and "preemptions/s" in ds[1].reason


def test_panic_burst_scales_up_at_once_and_blocks_scale_down() -> None:
    spec = PolicySpec(min_replicas=1, max_replicas=10, target_kv=0.5, scale_down_window_s=0,
                      scale_up_window_s=120, panic_window_s=60, max_scale_up_step=10)
    ds = run([snap(0, 2, [0.1, 0.1]), snap(10, 2, [1.0, 1.0], waiting=10), snap(20, 4, [0.1] * 4),
              snap(100, 4, [0.1] * 4)], spec)
    assert ds[1].desired == 4 and ds[1].panic  # 2.0 / 0.5; the 120 s up-window would have held
    assert ds[2].desired == 4 and ds[2].panic  # no scale-down while panicking
    assert ds[3].desired < 4 and not ds[3].panic


def test_step_and_max_bounds() -> None:
    spec = PolicySpec(max_replicas=5, max_scale_up_step=2, target_kv=0.1)
    (d,) = run([snap(0, 1, [1.0])], spec)
    assert d.desired == 3 and "step limited" in d.limited
    (d,) = run([snap(0, 4, [1.0] * 4)], spec)
    assert d.desired == 5


def test_missing_metrics_hold_and_never_zero() -> None:
    (d,) = run([Snapshot(now=0, replicas=3, ready={}, missing=("p0", "p1", "p2"))])
    assert not d.valid and d.desired == 3 and "no metrics" in d.reason


def test_partial_metrics_never_scale_down() -> None:
    steps = [snap(t, 3, [0.05], missing=("p1", "p2")) for t in range(0, 1000, 30)]
    assert all(d.desired == 3 for d in run(steps, PolicySpec(scale_down_window_s=60)))


def test_unschedulable_replicas_stop_scale_up() -> None:
    (d,) = run([snap(0, 2, [0.99], waiting=10, unschedulable=1,
                     unschedulable_reason="0/8 nodes: Insufficient nvidia.com/gpu")])
    assert d.desired == 2 and "Insufficient nvidia.com/gpu" in d.limited


def test_scale_to_zero_only_when_allowed() -> None:
    idle = [snap(t, 1, [0.0]) for t in range(0, 400, 30)]
    for s in idle:
        object.__setattr__(s, "ready", {"p0": ReplicaMetrics(0.0, 0, 0, 0)})
    assert run(idle, PolicySpec(min_replicas=1, scale_down_window_s=120))[-1].desired == 1
    assert run(idle, PolicySpec(min_replicas=0, scale_down_window_s=120))[-1].desired == 0


def test_no_scale_down_before_a_full_window_of_history() -> None:
    """After an operator restart the policy has no history: it must not read that as 'no load'."""
    ds = run([snap(t, 4, [0.1] * 4) for t in range(0, 301, 30)])
    assert all(d.desired == 4 for d in ds[:-1]) and ds[-1].desired == 2


def test_no_ready_replica_yet_holds() -> None:
    (d,) = run([Snapshot(now=0, replicas=2, ready={}, pending=2)])
    assert not d.valid and d.desired == 2 and "starting" in d.reason


def queued(now: float, replicas: int, per_pod: list[tuple[float, float]], kv: float = 0.1) -> Snapshot:
    """Pods with cumulative (requests, requests queued over 1 s) in vLLM's queue-time buckets."""
    ready = {f"p{i}": ReplicaMetrics(kv_cache_usage=kv, running=2, waiting=0, preemptions_total=0,
                                     queue_time_buckets=((0.5, total - slow), (1.0, total - slow),
                                                         (2.0, total), (float("inf"), total)))
             for i, (total, slow) in enumerate(per_pod)}
    return Snapshot(now=now, replicas=replicas, ready=ready)


QSPEC = PolicySpec(min_replicas=1, max_replicas=20, target_kv=0.7, scale_down_window_s=300, max_queue_s=1.0,
                   max_slow_fraction=0.01, min_queue_samples=100, queue_window_s=120)


def test_queue_time_objective_scales_up_when_memory_is_idle() -> None:
    # 4 replicas at 10 % KV: KV alone says 1; 20 % of 400 requests queued over 1 s says add capacity
    steps = [queued(0, 4, [(0, 0)] * 4), queued(15, 4, [(100, 20)] * 4)]
    d = run(steps, QSPEC)[-1]
    assert d.desired == 6 and "queued over 1s" in d.reason, d.reason
    # the same load without an objective: KV decides alone and the count holds (no history for a scale-down)
    assert run(steps, SPEC)[-1].desired == 4


def test_queue_time_needs_enough_requests_and_interpolates_within_buckets() -> None:
    few = run([queued(0, 2, [(0, 0)] * 2), queued(15, 2, [(20, 10)] * 2)], QSPEC)[-1]
    assert few.desired == 2  # 40 requests in the window are too few to judge
    steps = [queued(0, 2, [(0, 0)] * 2), queued(15, 2, [(200, 50)] * 2)]
    lenient = PolicySpec(**{**QSPEC.__dict__, "max_queue_s": 2.0})  # every slow one finished within 2 s
    d = run(steps, lenient)[-1]
    assert d.desired == 2 and "queued" not in d.reason
    halfway = PolicySpec(**{**QSPEC.__dict__, "max_queue_s": 1.5})  # half of the 1-2 s bucket: 12.5 % slow
    d = run(steps, halfway)[-1]
    assert d.desired == 3 and "12.5% of 400 requests queued over 1.5s" in d.reason, d.reason


def test_occasional_slow_requests_block_scale_down() -> None:
    steps = [queued(t, 4, [(t * 10, t * 0.08)] * 4) for t in range(0, 331, 15)]  # 0.8 % slow, KV says 1
    ds = run(steps, QSPEC)
    assert all(d.desired == 4 for d in ds), [d.reason for d in ds if d.desired != 4][:1]
    quiet = [queued(t, 4, [(t * 10, 0)] * 4) for t in range(0, 331, 15)]
    assert run(quiet, QSPEC)[-1].desired < 4


def test_queue_growth_stops_when_more_replicas_do_not_help() -> None:
    # 3 % slow on 4 replicas -> 5; on 5 replicas still 3 % (requests stuck behind long prefills) -> hold
    state = PolicyState()
    state, d1 = decide(queued(0, 4, [(0, 0)] * 4), state, QSPEC)
    state, d1 = decide(queued(15, 4, [(100, 3)] * 4), state, QSPEC)
    assert d1.desired == 5
    state, _ = decide(queued(30, 5, [(200, 6)] * 4 + [(0, 0)]), state, QSPEC)  # the fifth one is up
    # the five are judged on their own requests, from the queue-settle time on (30 s)
    state, d2 = decide(queued(45, 5, [(300, 9)] * 4 + [(100, 3)]), state, QSPEC)
    assert d2.desired == 5 and "do not help" not in d2.reason, d2.reason
    state, d2 = decide(queued(60, 5, [(400, 12)] * 4 + [(200, 6)]), state, QSPEC)
    assert d2.desired == 5 and "3.0% queued over 1s on 5 replicas, 3.0% on 4: more replicas do not help" \
        in d2.reason, d2.reason


def test_scale_down_step_and_period() -> None:
    spec = PolicySpec(min_replicas=1, max_replicas=20, scale_down_window_s=60, max_scale_down_fraction=0.25,
                      scale_down_period_s=60)
    ds = run([snap(t, 8 if t < 75 else 6, [0.05] * (8 if t < 75 else 6)) for t in range(0, 136, 15)], spec)
    downs = [(i * 15, d.current, d.desired) for i, d in enumerate(ds) if d.desired < d.current]
    assert downs[0] == (60, 8, 6)  # a quarter of 8, after the window
    assert all(t - 60 >= 60 for t, _, _ in downs[1:])  # the next one a full period later


def test_a_shrunk_fleet_is_measured_before_it_shrinks_again() -> None:
    spec = PolicySpec(**{**QSPEC.__dict__, "scale_down_window_s": 60, "max_scale_down_fraction": 0.25,
                         "queue_window_s": 300})
    # 8 replicas, nothing slow, KV says 1: down to 6 once the window has passed
    steps = [queued(t, 8, [(t * 2, 0)] * 8) for t in range(0, 61, 15)]
    ds = run(steps, spec)
    assert (ds[-1].current, ds[-1].desired) == (8, 6)
    # on 6 replicas the shares in the window come from the 8: no further step until 6 have served 100 requests
    state = PolicyState()
    for s in steps:
        state, _ = decide(s, state, spec)
    held = []
    for t in range(75, 200, 15):
        state, d = decide(queued(t, 6, [(t * 0.05, 0)] * 6), state, spec)
        held.append(d)
    assert all(d.desired == 6 for d in held), [d.reason for d in held]
    assert "no scale-down yet" in held[0].reason
    # once they have (and nothing was slow), the next step comes
    state, d = decide(queued(300, 6, [(120, 0)] * 6), state, spec)
    assert d.desired == 5, d.reason


def closed_loop(spec: PolicySpec, slow_at: set[int], until: int, start: int = 2, restart_at: int | None = None,
                restarted: Callable[[PolicyState], PolicyState] = lambda s: PolicyState()) -> list[tuple[int, int]]:
    """Drive ``decide`` with its own replica count: 50 requests per pod per 15 s, 40 % of them slow in the
    ticks listed (a burst), none otherwise; at ``restart_at`` the operator restarts with ``restarted(state)``.
    Returns (t, desired) per tick."""
    state, replicas, counts, out = PolicyState(), start, {}, []
    for t in range(0, until, 15):
        if t == restart_at:
            state = restarted(state)
        for i in range(replicas):
            total, slow = counts.get(f"p{i}", (0.0, 0.0))
            counts[f"p{i}"] = (total + 50, slow + (20 if t in slow_at else 0))
        ready = {p: ReplicaMetrics(kv_cache_usage=0.1, running=2, waiting=0, preemptions_total=0,
                                   queue_time_buckets=((1.0, total - slow), (float("inf"), total)))
                 for p, (total, slow) in list(counts.items())[:replicas]}
        state, d = decide(Snapshot(now=t, replicas=replicas, ready=ready), state, spec)
        replicas = d.desired
        out.append((t, d.desired))
    return out


def test_recurring_bursts_keep_the_capacity_they_needed() -> None:
    spec = PolicySpec(**{**QSPEC.__dict__, "scale_down_window_s": 60, "queue_window_s": 30, "panic_window_s": 15,
                         "max_scale_down_fraction": 1.0, "burst_memory_s": 900})
    once = closed_loop(spec, {60}, 1200)
    assert max(n for _, n in once) == 3 and once[-1][1] < 3  # one burst: no memory, back down in time
    twice = closed_loop(spec, {60, 300}, 1500)
    held = [n for t, n in twice if 330 <= t < 1200]
    assert set(held) == {max(n for _, n in twice)} and held[0] > 3, twice  # the second burst's size stays
    assert twice[-1][1] < held[0]  # until the memory has passed since the last burst
    forgetful = closed_loop(PolicySpec(**{**spec.__dict__, "burst_memory_s": 0.0}), {60, 300}, 900)
    assert max(n for t, n in forgetful if t >= 600) < held[0], forgetful


def test_a_restarted_operator_keeps_the_burst_memory_and_scale_down_period_it_recorded() -> None:
    from kvscale.autoscaler.state_record import recalled, remembered
    spec = PolicySpec(**{**QSPEC.__dict__, "scale_down_window_s": 60, "queue_window_s": 30, "panic_window_s": 15,
                         "max_scale_down_fraction": 1.0, "burst_memory_s": 900})
    kept = closed_loop(spec, {60, 300}, 1500)
    # restarted at 600 s, inside the memory of the two bursts: from status, as if it had never stopped
    through_status = closed_loop(spec, {60, 300}, 1500, restart_at=600,
                                 restarted=lambda s: recalled(remembered(s), PolicyState()))
    assert through_status == kept
    # restarted in the middle of one burst: the queue windows start afresh (it grows further than it would
    # have), but it is still one burst, not a second one whose memory would hold that size for 900 s
    mid = closed_loop(spec, {60, 75, 90}, 1500, restart_at=75,
                      restarted=lambda s: recalled(remembered(s), PolicyState()))
    peak = max(n for _, n in mid)
    assert min(n for t, n in mid if 180 <= t < 900) < peak, mid
    # with nothing recorded, the new process forgets the bursts and shrinks the fleet inside the memory
    forgot = closed_loop(spec, {60, 300}, 1500, restart_at=600)
    held = max(n for t, n in kept if t >= 600)
    assert min(n for t, n in forgot if 600 <= t < 1200) < held, forgot
    # the scale-down period too: a scale-down recorded just before the restart holds the next one
    period = PolicySpec(min_replicas=1, max_replicas=20, scale_down_window_s=0, max_scale_down_fraction=0.25,
                        scale_down_period_s=120)
    state, d = decide(snap(0, 8, [0.05] * 8), PolicyState(), period)
    assert d.desired == 6
    after = recalled(remembered(state), PolicyState())
    _, d = decide(snap(60, 6, [0.05] * 6), after, period)
    assert d.desired == 6  # 60 s after the last scale-down, less than the 120 s period
    _, d = decide(snap(60, 6, [0.05] * 6), PolicyState(), period)
    assert d.desired < 6  # what a process that forgot it would have done


def test_an_unreadable_record_recalls_nothing() -> None:
    from kvscale.autoscaler.state_record import recalled
    for bad in (None, "x", {"lastScaleDownTime": "soon"}, {"burstReplicas": [{"time": 1}]}):
        assert recalled(bad, PolicyState()) == PolicyState()  # type: ignore[arg-type]


def test_burst_memory_runs_from_the_latest_burst() -> None:
    spec = PolicySpec(**{**QSPEC.__dict__, "scale_down_window_s": 60, "queue_window_s": 30, "panic_window_s": 15,
                         "max_scale_down_fraction": 1.0, "burst_memory_s": 600})
    sizes = closed_loop(spec, {60, 495, 990}, 1800)
    peak = max(n for _, n in sizes)
    assert all(n == peak for t, n in sizes if 1005 <= t < 1590), sizes  # 600 s after the third, not the first
    assert sizes[-1][1] < peak


def test_one_lasting_queue_is_one_burst_whatever_the_panic_window() -> None:
    spec = PolicySpec(min_replicas=1, max_replicas=10, target_kv=0.7, scale_down_window_s=0, panic_window_s=1,
                      burst_memory_s=1800)
    state = PolicyState()
    for t in range(0, 300, 15):
        state, _ = decide(snap(t, 2, [0.1] * 2, waiting=40 if 150 <= t <= 195 else 0), state, spec)
    assert len(state.bursts) == 1, state.bursts


def test_brief_queues_on_an_idle_fleet_do_not_grow_it() -> None:
    # a few requests wait for one reading every five minutes; KV is nearly empty: nothing to remember
    from kvscale.operator.autoscale import policy_spec
    from kvscale.operator.resource import Autoscaling

    spec = policy_spec(Autoscaling.model_validate({"maxReplicas": 10}))
    state, replicas, sizes = PolicyState(), 8, []
    for t in range(0, 3600, 15):
        state, d = decide(snap(t, replicas, [0.1] * replicas, waiting=6 * replicas if t % 300 == 150 else 0),
                          state, spec)
        replicas = d.desired
        sizes.append(replicas)
    assert all(b <= a for a, b in itertools.pairwise(sizes)), sizes  # never back up
    assert sizes[-1] == 1


def test_a_size_that_missed_the_objective_is_not_returned_to_while_remembered() -> None:
    # compute-bound: fewer than 6 replicas queue 40 % of requests over the objective, 6 or more none
    def loop(memory: float) -> list[int]:
        spec = PolicySpec(**{**QSPEC.__dict__, "scale_down_window_s": 60, "queue_window_s": 60,
                             "max_scale_down_fraction": 0.2, "burst_memory_s": memory})
        state, replicas, counts, sizes = PolicyState(), 7, {}, []
        for t in range(0, 3600, 15):
            for i in range(replicas):
                total, slow = counts.get(f"p{i}", (0.0, 0.0))
                counts[f"p{i}"] = (total + 50, slow + (20 if replicas < 6 else 0))
            ready = {p: ReplicaMetrics(kv_cache_usage=0.1, running=2, waiting=0, preemptions_total=0,
                                       queue_time_buckets=((1.0, total - slow), (float("inf"), total)))
                     for p, (total, slow) in list(counts.items())[:replicas]}
            state, d = decide(Snapshot(now=t, replicas=replicas, ready=ready), state, spec)
            replicas = d.desired
            sizes.append(replicas)
        return sizes

    remembered = loop(1800)
    first_miss = remembered.index(5)
    assert 5 not in remembered[first_miss + 8: first_miss + 100], remembered  # 1,500 s later still not back
    forgetful = loop(0)
    visits = sum(1 for a, b in itertools.pairwise(forgetful) if b == 5 and a != 5)
    assert visits >= 3, forgetful


def test_activation_brings_zero_back_and_keeps_the_last_replica_while_there_is_demand() -> None:
    from kvscale.autoscaler.policy import Decision, activate

    at_zero = Decision(True, 0, 0, "scaled to zero: no replica to measure")
    assert activate(at_zero, 3.0, 0.0, 0).desired == 1
    assert activate(at_zero, 3.0, 0.0, 2).desired == 2
    assert activate(at_zero, 0.0, 0.0, 0) == Decision(True, 0, 0, "activation 0 <= 0: staying at zero")
    unknown = activate(at_zero, None, 0.0, 0)
    assert not unknown.valid and unknown.desired == 0  # a failed query never scales, up or down
    idle = Decision(True, 1, 0, "scale down 1 -> 0")
    assert activate(idle, 0.0, 0.0, 0) == idle
    kept = activate(idle, 2.0, 0.0, 0)
    assert kept.desired == 1 and "activation 2 > 0: keeping one replica" in kept.reason
    assert activate(idle, None, 0.0, 0).desired == 1
    busy = Decision(True, 2, 3, "scale up 2 -> 3")
    assert activate(busy, 0.0, 0.0, 0) == busy


def test_a_starting_replica_is_kept_while_the_ready_ones_are_all_needed() -> None:
    # a queue asked for a second replica; it is admitted and the cache dips under target before the
    # new one is Ready: removing it would throw its cold start away and pay it again moments later
    spec = PolicySpec(min_replicas=1, max_replicas=4, target_kv=0.5, scale_down_window_s=45, panic_window_s=45)
    starting = [snap(0, 1, [0.2], waiting=10), snap(12, 1, [0.2], waiting=10)]
    starting += [snap(t, 2, [0.3 + t / 1000], pending=1) for t in range(15, 121, 5)]
    ds = run(starting, spec)
    assert ds[1].desired == 2 and all(d.desired == 2 for d in ds[2:])
    assert "starting and all 1 ready ones needed" in ds[-1].reason
    # once the ready replicas alone are more than enough (load gone), the starting one goes
    idle = run([*starting, *(snap(t, 2, [0.0], pending=1) for t in range(125, 200, 5))], spec)
    assert idle[-1].desired == 1
