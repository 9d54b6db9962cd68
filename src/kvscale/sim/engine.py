"""A discrete-event model of one vLLM replica: paged KV cache, continuous batching with chunked
prefill under a token budget, admission when blocks are free, recompute preemption, and step
times from kvscale.estimator.performance, the planner's model. Runs of pure decode are advanced many steps at a time.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import deque
from dataclasses import dataclass, field

from ..autoscaler.vllm_metrics import QUEUE_TIME_BUCKETS
from ..estimator.gpus import GPUType
from ..estimator.memory import MemoryEstimate
from ..estimator.model_spec import ModelSpec
from ..estimator.params import count_params
from ..estimator.performance import StepCost, step_cost
from ..estimator.quantization import Quantization


@dataclass(frozen=True)
class ReplicaModel:
    """What the simulator needs about a replica: the scheduler's limits from the estimator's plan and the
    step time from the performance model the planner uses."""

    kv_blocks: int
    block_size: int
    max_num_seqs: int
    max_batched_tokens: int
    cost: StepCost

    @classmethod
    def from_plan(cls, spec: ModelSpec, gpu: GPUType, est: MemoryEstimate, tp: int, pp: int = 1,
                  quantization: Quantization = Quantization.BF16) -> ReplicaModel:
        cost = step_cost(spec, count_params(spec), gpu, est, tp, pp, quantization)
        return cls(kv_blocks=est.num_blocks, block_size=est.block_size, max_num_seqs=est.max_num_seqs,
                   max_batched_tokens=est.max_num_batched_tokens, cost=cost)

    def step_time(self, kv_tokens_read: float, tokens_computed: int, seqs: int = 0) -> float:
        return self.cost.seconds(kv_tokens_read, tokens_computed, seqs)


@dataclass(eq=False)
class Seq:
    rid: int
    arrival: float
    prompt: int
    output: int
    computed: int = 0  # tokens whose KV is in the cache
    generated: int = 0
    blocks: int = 0
    first_token_at: float | None = None
    scheduled_at: float | None = None  # first admission; preemption does not reset it
    finished_at: float | None = None
    preempted: int = 0

    @property
    def need(self) -> int:
        """Tokens whose KV must be in the cache for the next token to be sampled: the prompt and every token
        generated so far (vLLM's ``num_tokens``). A preempted sequence recomputes all of them on resume."""
        return self.prompt + self.generated


@dataclass
class Replica:
    model: ReplicaModel
    name: str = "r0"
    now: float = 0.0
    ready_at: float = 0.0
    draining: bool = False
    waiting: deque[Seq] = field(default_factory=deque)
    running: list[Seq] = field(default_factory=list)
    used_blocks: int = 0
    preemptions: int = 0
    finished: list[Seq] = field(default_factory=list)
    queue_hist: list[int] = field(default_factory=lambda: [0] * len(QUEUE_TIME_BUCKETS))  # per bucket

    @property
    def queue_time_buckets(self) -> tuple[tuple[float, float], ...]:
        """Cumulative, like vllm:request_queue_time_seconds_bucket (observed at finish, as vLLM does)."""
        return tuple(zip(QUEUE_TIME_BUCKETS, itertools.accumulate(float(c) for c in self.queue_hist), strict=True))

    # ---- what vLLM's /metrics would say ----
    @property
    def kv_usage(self) -> float:
        return self.used_blocks / self.model.kv_blocks if self.model.kv_blocks else 1.0

    @property
    def idle(self) -> bool:
        return not self.running and not self.waiting

    def submit(self, seq: Seq) -> None:
        self.waiting.append(seq)

    # ---- engine ----
    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.model.block_size)

    def _preempt_last(self) -> Seq:
        victim = self.running.pop()
        self.used_blocks -= victim.blocks
        victim.blocks = 0
        victim.computed = 0
        victim.preempted += 1
        self.preemptions += 1
        self.waiting.appendleft(victim)
        return victim

    def advance(self, until: float) -> None:
        """Run engine steps until the replica's clock reaches ``until`` (or it has nothing to do)."""
        if self.now < self.ready_at:
            self.now = min(until, self.ready_at)
        while self.now < until:
            if self.idle:
                self.now = until
                return
            self._step(until)

    def _step(self, until: float) -> None:
        m = self.model
        budget = m.max_batched_tokens
        scheduled: list[tuple[Seq, int]] = []
        preempted = False
        # 1. running sequences first; grow their blocks, preempting the newest when memory runs out
        i = 0
        while i < len(self.running):
            s = self.running[i]
            todo = min(s.need - s.computed, budget)
            if todo <= 0:
                break
            extra = self._blocks_for(s.computed + todo) - s.blocks
            while extra > m.kv_blocks - self.used_blocks and self.running[-1] is not s:
                self._preempt_last()
                preempted = True
            if extra > m.kv_blocks - self.used_blocks:
                self._preempt_last()  # not even this one fits: it waits
                preempted = True
                break
            s.blocks += extra
            self.used_blocks += extra
            scheduled.append((s, todo))
            budget -= todo
            i += 1
            if budget <= 0:
                break
        # 2. admit waiting sequences while the budget, the batch size and the free blocks allow. As vLLM's V1
        # scheduler: none in a step that preempted, and only when the whole sequence fits, not just the first
        # chunk (scheduler_reserve_full_isl, on by default); only the chunk's blocks are allocated.
        while not preempted and self.waiting and budget > 0 and len(self.running) < m.max_num_seqs:
            s = self.waiting[0]
            todo = min(s.need - s.computed, budget)
            if self._blocks_for(s.need) - s.blocks > m.kv_blocks - self.used_blocks:
                break
            extra = self._blocks_for(s.computed + todo) - s.blocks
            self.waiting.popleft()
            if s.scheduled_at is None:
                s.scheduled_at = self.now
            s.blocks += extra
            self.used_blocks += extra
            self.running.append(s)
            scheduled.append((s, todo))
            budget -= todo
        if not scheduled:
            if not preempted:
                self.now = until  # blocked: nothing fits until something changes outside
            return  # after a preemption the next step may admit (vLLM schedules again at once)
        decode_only = all(s.need - s.computed == 1 for s, _ in scheduled) and not self.waiting
        steps = self._decode_run_length(scheduled, until) if decode_only else 1
        kv_read = sum(s.computed for s, _ in scheduled) + (steps - 1) * len(scheduled) / 2
        computed = sum(t for _, t in scheduled)
        dt = self.model.step_time(kv_read, computed, len(scheduled)) * steps
        self.now += dt
        done = []
        for s, todo in scheduled:
            if steps > 1:
                s.computed += steps
                s.generated += steps
                new_blocks = self._blocks_for(s.computed) - s.blocks
                s.blocks += new_blocks
                self.used_blocks += new_blocks
            else:
                s.computed += todo
                if s.computed >= s.need:
                    s.generated += 1
            if s.first_token_at is None and s.generated > 0:
                s.first_token_at = self.now
            if s.generated >= s.output:
                done.append(s)
        for s in done:
            s.finished_at = self.now
            queued = (s.scheduled_at if s.scheduled_at is not None else s.arrival) - s.arrival
            self.queue_hist[bisect.bisect_left(QUEUE_TIME_BUCKETS, queued)] += 1
            self.running.remove(s)
            self.used_blocks -= s.blocks
            s.blocks = 0
            self.finished.append(s)

    def _decode_run_length(self, scheduled: list[tuple[Seq, int]], until: float) -> int:
        """How many pure-decode steps can run with no completion, no arrival and enough blocks."""
        k = min(s.output - s.generated for s, _ in scheduled)
        free = self.model.kv_blocks - self.used_blocks
        bs = self.model.block_size
        n = len(scheduled)
        k = min(k, (free // n) * bs + min(bs - (s.computed % bs or bs) for s, _ in scheduled))
        if k <= 1:
            return 1
        one = self.model.step_time(sum(s.computed for s, _ in scheduled), n, n)
        k = min(k, max(1, math.floor((until - self.now) / one)))
        return max(1, k)
