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
