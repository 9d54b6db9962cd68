"""Slices of a real request trace, token counts scaled down so that a tiny KV cache fills but a CPU keeps up."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .traces import Request, load_trace

# rows of the Azure conversation trace around the slices used here, with the trace's own time origin
TRACE = str(Path(__file__).resolve().parent / "data" / "azure_conv_1800-1980s.csv")


@dataclass(frozen=True)
class _TraceCut:
    """Requests from ``start_s`` on in a real trace, token counts scaled down so that the tiny cache fills
    but a CPU keeps up."""

    trace: str = TRACE
    start_s: float = 1860.0  # a busy stretch of the trace (~8 requests/s)
    input_div: int = 8
    max_input: int = 1024
    max_output: int = 256

    def _scaled(self, r: Request, t: float) -> Request:
        return Request(t, max(1, min(self.max_input, r.input_tokens // self.input_div)),
                       max(1, min(self.max_output, r.output_tokens)))


@dataclass(frozen=True)
class Workload(_TraceCut):
    """A slice of the trace at its own pace, or ``rate_scale`` times as fast."""

    name: str = "trace"
    duration_s: float = 90.0
    rate_scale: float = 1.0

    def requests(self) -> list[Request]:
        """Arrivals relative to the slice start; deterministic for a given trace file."""
        out = []
        for r in load_trace(self.trace):
            t = (r.arrival_s - self.start_s) / self.rate_scale
            if 0.0 <= t < self.duration_s:
                out.append(self._scaled(r, t))
        return out


@dataclass(frozen=True)
class Burst(_TraceCut):
    """The next ``n`` requests of the trace, all at once: far more KV than the cache holds. What happens
    then (admissions, growth, preemptions, recomputation) is decided by the scheduler's rules far more than
    by step times, so this isolates the engine logic from the CPU's timing noise. ``hold``: released to the
    scheduler together (see ``replay_real``)."""

    name: str = "burst"
    hold: bool = True
    n: int = 40

    def requests(self) -> list[Request]:
        reqs = [r for r in load_trace(self.trace) if r.arrival_s >= self.start_s][: self.n]
        return [self._scaled(r, 0.0) for r in reqs]


#: The level is fitted at the load the comparison replays: the default slice (1860 s on) asks ~9 requests
#: and ~1,000 output tokens per second, more than this engine delivers, so it runs with a queue; the 20 s
#: before it at their own pace ask 833, where the engine keeps up and its API server has less to do. The
#: 24 s before it, played 1.2x as fast, ask 9.3 requests and 988 output tokens per second, on other requests.
CALIBRATION_SLICE = Workload(name="calibration", start_s=1836.0, duration_s=20.0, rate_scale=1.2)
