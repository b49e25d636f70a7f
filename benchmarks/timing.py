"""Timing machinery: the hardware floor, interleaved medians, records and tables."""

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch


@dataclass
class Case:
    """One operation to time.

    ``scalars`` is the number of scalars the floor is timed on (n for scalar data, 4n for
    quaternions, n·k for probability vectors); ``floor_calls`` the number of floor calls the
    operation is measured against (the steps of a loop).
    """

    name: str
    process: str
    op: str
    n: int
    scalars: int
    fn: Callable[[], object]
    floor_calls: int = 1


@dataclass
class Record:
    """One line of ``results.json``; ratio_to_floor = seconds / (floor_calls · floor seconds)."""

    name: str
    process: str
    op: str
    device: str
    dtype: str
    n: int
    seconds: float
    items_per_s: float
    ratio_to_floor: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Timer:
    """Median wall times after a warm-up; the operations and their floors interleaved.

    ``measure`` runs its cases and each one's floor in turn (op, floor, op, floor, ...),
    round after round, so that a change in the machine's load moves them all alike and their
    ratios stay meaningful.
    """

    device: torch.device
    dtype: torch.dtype
    warmup: int = 1
    min_repeats: int = 5
    max_repeats: int = 50
    min_seconds: float = 0.5    # each case repeats until it has run this long in total ...
    max_seconds: float = 10.0   # ... unless the group has run this long (per case)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _once(self, fn) -> float:
        self._sync()
        start = time.perf_counter()
        fn()
        self._sync()
        return time.perf_counter() - start

    def floor(self, scalars: int) -> Callable[[], torch.Tensor]:
        """The floor: one ``randn_like`` and one fused multiply-add, ``x + s * randn_like(x)``."""
        x = torch.randn(scalars, device=self.device, dtype=self.dtype)
        return lambda: torch.add(x, torch.randn_like(x), alpha=0.5)

    def _more(self, op_times: list[list[float]]) -> bool:
        rounds, spent = len(op_times[0]), sum(map(sum, op_times))
        return rounds == 0 or (rounds < self.max_repeats
                               and spent < self.max_seconds * len(op_times)
                               and (rounds < self.min_repeats
                                    or min(map(sum, op_times)) < self.min_seconds))

    def measure(self, cases: list[Case]) -> list[Record]:
        """Time ``cases`` side by side, each with its floor; one record per case."""
        floors = [self.floor(case.scalars) for case in cases]
        op_times, floor_times = [[] for _ in cases], [[] for _ in cases]
        for _ in range(self.warmup):
            warm = [(self._once(case.fn), self._once(floor)) for case, floor in zip(cases, floors)]
            if min(op for op, _ in warm) > self.max_seconds:   # one-time costs are negligible:
                for (op, fl), ops, fls in zip(warm, op_times, floor_times):  # keep these
                    ops.append(op)
                    fls.append(fl)
                break
        while self._more(op_times):
            for case, floor, ops, fls in zip(cases, floors, op_times, floor_times):
                ops.append(self._once(case.fn))
                fls.append(self._once(floor))
        return [self._record(case, statistics.median(ops), statistics.median(fls))
                for case, ops, fls in zip(cases, op_times, floor_times)]

    def _record(self, case: Case, seconds: float, floor_seconds: float) -> Record:
        return Record(case.name, case.process, case.op, str(self.device),
                      str(self.dtype).removeprefix("torch."), case.n, seconds,
                      case.n / seconds, seconds / (case.floor_calls * floor_seconds))


def quick_timer(device: torch.device, dtype: torch.dtype) -> Timer:
    """One warm-up call and one timed call: for smoke runs and for probing a case's cost."""
    return Timer(device, dtype, warmup=1, min_repeats=1, max_repeats=1, min_seconds=0.0)


def profile(case: Case, calls: int = 3, rows: int = 12) -> str:
    """The operators that take ``case``'s time (torch.profiler, after one warm-up call)."""
    case.fn()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(calls):
            case.fn()
    sort = "self_cuda_time_total" if len(activities) > 1 else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=rows)


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table with aligned columns (readable in a terminal and in the README)."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule] + [line(r) for r in rows])
