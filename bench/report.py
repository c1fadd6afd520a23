"""The results as Markdown: context, the side-by-side table, CPU use, and what Dockyard loses."""

from __future__ import annotations

from collections.abc import Mapping

from bench.servers import DISTRIBUTION, DOCKYARD
from bench.stats import Figure, Results

MACHINE = "machine"
TABLE_INTRO = (
    "Medians over the repetitions; min–max is the spread across them. The ratio is "
    "Dockyard / Distribution of the medians; for rates (MB/s, req/s) higher is better, "
    "for times, latencies and memory lower is better, and the last column says which "
    "way that falls (×F behind = Dockyard needs F times better to draw level; level = "
    "the same median). \"Within noise\" marks a gap this run cannot tell from chance: "
    "each server's median lies inside the other's min–max, so the medians are closer "
    "than either server's own figures were from one repetition to the next; which side "
    "of level the medians fell on is still shown."
)
CPU_INTRO = (
    "Server CPU is the sum over the server's process tree (each process's CPU-time "
    "clock, in nanoseconds), client CPU is the load generator's (getrusage of the "
    "bench process or of wrk/ab/curl/skopeo). "
    "ms/MB for blob transfers, µs/req for request rates, seconds for one-off jobs."
)


def number(value: float | None) -> str:
    if value is None:
        return "–"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def spread(figure: Figure, kind: str) -> str:
    found = figure.spread(kind)
    if found is None:
        return "–"
    low, high = found
    return number(low) if low == high else f"{number(low)}–{number(high)}"


def verdict(figure: Figure) -> str:
    if figure.ratio() is None:
        return "n/a"
    if figure.level():
        return "level"
    ahead = figure.dockyard_ahead()
    side = "ahead" if ahead else f"behind ×{figure.factor_behind():.2f}"
    if figure.within_noise():
        return f"within noise ({side})"
    return side if ahead else f"**{side}**"


def _direction(figure: Figure) -> str:
    return "higher" if figure.higher_is_better else "lower"


def figure_table(results: Results) -> list[str]:
    lines = [
        (
            "| figure | unit (better) | Dockyard median | Dockyard min–max "
            "| Distribution median | Distribution min–max | ratio D/D | Dockyard |"
        ),
        "|---|---|--:|--:|--:|--:|--:|---|",
    ]
    group = None
    for figure in results.figures.values():
        if MACHINE in figure.samples:
            continue
        if figure.group != group:
            group = figure.group
            lines.append(f"| **{group}** | | | | | | | |")
        ratio = figure.ratio()
        label = figure.label + (f" ({figure.note})" if figure.note else "")
        lines.append(
            f"| {label} | {figure.unit} ({_direction(figure)}) "
            f"| {number(figure.median(DOCKYARD))} | {spread(figure, DOCKYARD)} "
            f"| {number(figure.median(DISTRIBUTION))} | {spread(figure, DISTRIBUTION)} "
            f"| {'–' if ratio is None else f'{ratio:.2f}'} | {verdict(figure)} |"
        )
    return lines


def cpu_table(results: Results) -> list[str]:
    lines = [
        (
            "| figure | CPU unit | Dockyard server | Distribution server "
            "| client (Dockyard run) | client (Distribution run) |"
        ),
        "|---|---|--:|--:|--:|--:|",
    ]
    for figure in results.figures.values():
        if MACHINE in figure.samples:
            continue
        cells = [
            figure.cpu_per_work(DOCKYARD, "server"),
            figure.cpu_per_work(DISTRIBUTION, "server"),
            figure.cpu_per_work(DOCKYARD, "client"),
            figure.cpu_per_work(DISTRIBUTION, "client"),
        ]
        if all(cell is None for cell in cells):
            continue
        lines.append(
            f"| {figure.group.split('.')[0]}. {figure.label} | {figure.cpu_unit} | "
            + " | ".join(number(cell) for cell in cells)
            + " |"
        )
    return lines


def machine_table(results: Results) -> list[str]:
    lines = ["| limit | unit | median | min–max |", "|---|---|--:|--:|"]
    for figure in results.figures.values():
        if MACHINE in figure.samples:
            lines.append(
                f"| {figure.label} | {figure.unit} | {number(figure.median(MACHINE))} "
                f"| {spread(figure, MACHINE)} |"
            )
    return lines


def _loss_line(f: Figure) -> str:
    return (
        f"- {f.group.split('.')[0]}. {f.label}: Dockyard {number(f.median(DOCKYARD))} "
        f"({spread(f, DOCKYARD)}) vs Distribution {number(f.median(DISTRIBUTION))} "
        f"({spread(f, DISTRIBUTION)}) {f.unit} ({_direction(f)} is better), "
        f"behind ×{f.factor_behind():.2f}"
    )


def losses(results: Results) -> list[str]:
    """Every figure whose median is behind: first those beyond the noise, then those
    within it, each list worst first."""
    behind = [
        f
        for f in results.figures.values()
        if MACHINE not in f.samples and f.dockyard_ahead() is False
    ]
    behind.sort(key=Figure.factor_behind, reverse=True)
    clear: list[Figure] = []
    noisy: list[Figure] = []
    for f in behind:
        (noisy if f.within_noise() else clear).append(f)
    lines = [_loss_line(f) for f in clear]
    if not clear:
        lines.append(
            "Dockyard is ahead or level on every figure measured by both"
            + (", but for the gaps within noise below." if noisy else ".")
        )
    if noisy:
        lines += [
            "",
            "Behind by the medians, within noise (each median inside the other server's "
            "min–max):",
            "",
        ]
        lines += [_loss_line(f) for f in noisy]
    return lines


def render(results: Results, context: Mapping[str, str], notes: list[str]) -> str:
    out = ["# Dockyard vs Distribution: benchmark results", ""]
    out += [f"- **{key}**: {value}" for key, value in context.items()]
    out += ["", "## Side by side", ""]
    out += [TABLE_INTRO, ""]
    out += figure_table(results)
    out += ["", "## Where Dockyard is behind", ""]
    out += losses(results)
    out += ["", "## CPU per unit of work (medians)", ""]
    out += [CPU_INTRO, ""]
    out += cpu_table(results)
    out += ["", "## The machine's limits, for context", ""]
    out += machine_table(results)
    if notes:
        out += ["", "## Notes", ""]
        out += [f"- {note}" for note in notes]
    return "\n".join(out) + "\n"
