"""Figures and their samples: what was measured, in which unit, and which way is better."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from bench.servers import DISTRIBUTION, DOCKYARD

# Medians this close are the same figure: CPU times are subtracted as floats (clock
# ticks, where a process's CPU clock cannot be read), so two equal counts can differ in
# their last bits.
LEVEL_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Sample:
    value: float
    # CPU seconds the server's process tree and the client used for this sample, and
    # the work done (bytes or requests), so CPU can be compared per unit of work.
    server_cpu: float | None = None
    client_cpu: float | None = None
    work: float | None = None


@dataclass
class Figure:
    key: str
    group: str
    label: str
    unit: str
    higher_is_better: bool
    # "MB" or "req" when CPU should be shown per MB or per request, "" for totals.
    work_unit: str = ""
    note: str = ""
    samples: dict[str, list[Sample]] = field(default_factory=dict)

    def add(self, kind: str, sample: Sample) -> None:
        self.samples.setdefault(kind, []).append(sample)

    def values(self, kind: str) -> list[float]:
        return [s.value for s in self.samples.get(kind, [])]

    def median(self, kind: str) -> float | None:
        values = self.values(kind)
        return statistics.median(values) if values else None

    def spread(self, kind: str) -> tuple[float, float] | None:
        values = self.values(kind)
        return (min(values), max(values)) if values else None

    def ratio(self) -> float | None:
        """Dockyard / Distribution of the medians."""
        ours, theirs = self.median(DOCKYARD), self.median(DISTRIBUTION)
        if ours is None or theirs is None or theirs == 0:
            return None
        return ours / theirs

    def level(self) -> bool:
        ratio = self.ratio()
        return ratio is not None and abs(ratio - 1.0) <= LEVEL_TOLERANCE

    def within_noise(self) -> bool:
        """Whether this run cannot tell the servers apart: each median lies inside the
        other server's min–max, so the gap between them is smaller than what either
        moved by from one repetition to the next. Needs two samples of each; a single
        sample says nothing about noise."""
        ours, theirs = self.values(DOCKYARD), self.values(DISTRIBUTION)
        if len(ours) < 2 or len(theirs) < 2:
            return False
        ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)
        return (
            min(theirs) <= ours_median <= max(theirs)
            and min(ours) <= theirs_median <= max(ours)
        )

    def factor_behind(self) -> float:
        """How many times better Dockyard's median would have to be to draw level."""
        ratio = self.ratio() or 1.0
        return 1 / ratio if self.higher_is_better else ratio

    def dockyard_ahead(self) -> bool | None:
        """Whether Dockyard is ahead or level; None when either server has no median."""
        ratio = self.ratio()
        if ratio is None:
            return None
        if self.level():
            return True
        return ratio >= 1.0 if self.higher_is_better else ratio <= 1.0

    def cpu_per_work(self, kind: str, which: str) -> float | None:
        """Median CPU per unit of work: ms per MB, µs per request, or seconds in total."""
        per: list[float] = []
        for sample in self.samples.get(kind, []):
            cpu = sample.server_cpu if which == "server" else sample.client_cpu
            if cpu is None:
                continue
            if self.work_unit == "MB" and sample.work:
                per.append(cpu * 1000.0 / (sample.work / 1e6))
            elif self.work_unit == "req" and sample.work:
                per.append(cpu * 1e6 / sample.work)
            elif not self.work_unit:
                per.append(cpu)
        return statistics.median(per) if per else None

    @property
    def cpu_unit(self) -> str:
        return {"MB": "ms/MB", "req": "µs/req"}.get(self.work_unit, "s")


class Results:
    """Every figure in the order it was declared, so the report keeps the brief's order."""

    def __init__(self) -> None:
        self.figures: dict[str, Figure] = {}

    def declare(
        self,
        key: str,
        group: str,
        label: str,
        unit: str,
        higher_is_better: bool,
        work_unit: str = "",
        note: str = "",
    ) -> Figure:
        if key not in self.figures:
            self.figures[key] = Figure(key, group, label, unit, higher_is_better, work_unit, note)
        return self.figures[key]

    def add(self, key: str, kind: str, sample: Sample) -> None:
        self.figures[key].add(kind, sample)
