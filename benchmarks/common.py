"""Shared timing helpers: every benchmark reports rates and ratios measured in one run."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Result:
    """One measured rate, and optionally its ratio to a baseline measured in the same run."""

    suite: str
    name: str
    rate: float
    unit: str = "batches/s"
    baseline: str | None = None
    ratio: float | None = None
    target: str | None = None

    def row(self) -> str:
        ratio = "" if self.ratio is None else f"{self.ratio:6.2f}x {self.baseline}"
        target = "" if self.target is None else f"(target {self.target})"
        return f"{self.suite:<10} {self.name:<44} {self.rate:>10.1f} {self.unit:<10} {ratio:<34} {target}"


def rate(fn: Callable[[], object], *, count: int, min_time: float = 1.0, repeats: int = 3) -> float:
    """Best of ``repeats`` rates of ``count`` units per call of ``fn``; each repeat runs for ``min_time`` s or more."""
    fn()  # warm up
    best = 0.0
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        best = max(best, calls * count / elapsed)
    return best


def ratios(suite: str, rates: dict[str, float], baseline: str, targets: dict[str, str] | None = None,
           unit: str = "batches/s") -> list[Result]:
    """Results for every entry of ``rates``, each with its ratio to ``rates[baseline]``."""
    targets = targets or {}
    base = rates[baseline]
    return [
        Result(suite, name, value, unit, None if name == baseline else baseline,
               None if name == baseline else value / base, targets.get(name))
        for name, value in rates.items()
    ]


def in_turns(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Each run's value in each of ``repeats`` turns; every run goes once per turn, in order, so drift and
    other load on the machine hit them alike."""
    values: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run_once in runs.items():
            values[name].append(run_once())
    return values


def spread(values: list[float], base: list[float] | None = None) -> str:
    """``[3 turns: 80.1-95.3]``, or with ``base`` the range of the same-turn ratios: ``[3 turns: 0.91-1.02x]``."""
    if base is None:
        return f"[{len(values)} turns: {min(values):.1f}-{max(values):.1f}]"
    turns = [a / b for a, b in zip(values, base, strict=True)]
    return f"[{len(values)} turns: {min(turns):.2f}-{max(turns):.2f}x]"


def versus(suite: str, values: dict[str, list[float]], name: str, baseline: str, target: str | None = None,
           unit: str = "batches/s") -> Result:
    """The best turn of ``name`` and its ratio to the best of ``baseline``; the name carries the same-turn ratios."""
    best, base = max(values[name]), max(values[baseline])
    return Result(suite, f"{name} {spread(values[name], values[baseline])}", best, unit, baseline, best / base, target)


def best_in_turns(suite: str, values: dict[str, list[float]], baseline: str, targets: dict[str, str] | None = None,
                  unit: str = "steps/s") -> list[Result]:
    """Rows of the best value of each run and its ratio to the best baseline; the name carries the spread:
    the range of the runs' values and of their ratios to the baseline of the same turn."""
    targets = targets or {}
    rows = [Result(suite, f"{baseline} {spread(values[baseline])}", max(values[baseline]), unit)]
    others = [name for name in values if name != baseline]
    return rows + [versus(suite, values, name, baseline, targets.get(name), unit) for name in others]
