"""Reports in the posts' column layout: a rich table on screen and the same as Markdown."""

from __future__ import annotations

from rich.table import Table

from gh200.bench.smoke import GateResult, RunSet
from gh200.bench.stats import Stats

COLUMNS = (
    "Profile",
    "Shape",
    "Runs",
    "Median output tok/s",
    "Min",
    "Max",
    "P10",
    "P90",
    "CV",
    "Median TPOT",
    "Median acceptance",
    "Sub-60 acceptance runs",
)
DETAIL_COLUMNS = (
    "Profile",
    "Shape",
    "Median decode tok/s",
    "Median TTFT",
    "Median ITL",
    "Median total tok/s",
    "Median prompt tok/s",
    "Median acceptance length",
    "Acceptance by position",
    "Acceptance histogram",
    "Acceptance from",
    "Max cached prompt tokens",
)
# Per-response and counter acceptance further apart than this: something else used the server.
DISAGREEMENT_NOTE = 0.02


def _num(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


def _pct(stats: Stats | None) -> str:
    return "n/a" if stats is None else f"{stats.median * 100:.2f}%"


def rows(profile: str, sets: list[RunSet]) -> list[list[str]]:
    out: list[list[str]] = []
    for run_set in sets:
        summary = run_set.summary()
        tok = summary.output_tok_s
        runs = str(summary.runs) if run_set.complete else f"{summary.runs} of {run_set.planned_runs}"
        out.append(
            [
                profile,
                run_set.plan.label,
                runs,
                _num(tok.median if tok else None),
                _num(tok.min if tok else None),
                _num(tok.max if tok else None),
                _num(tok.p10 if tok else None),
                _num(tok.p90 if tok else None),
                _num(tok.cv if tok else None, 3),
                _ms(summary.tpot_ms.median if summary.tpot_ms else None),
                _pct(summary.acceptance),
                str(summary.sub60_runs),
            ]
        )
    return out


def detail_rows(profile: str, sets: list[RunSet]) -> list[list[str]]:
    out: list[list[str]] = []
    for run_set in sets:
        s = run_set.summary()
        cached = [r.cached_tokens for r in run_set.runs if r.cached_tokens is not None]
        out.append(
            [
                profile,
                run_set.plan.label,
                _num(s.decode_tok_s.median if s.decode_tok_s else None),
                _ms(s.ttft_ms.median if s.ttft_ms else None),
                _ms(s.itl_ms.median if s.itl_ms else None),
                _num(s.total_tok_s.median if s.total_tok_s else None),
                _num(s.prompt_tok_s.median if s.prompt_tok_s else None),
                _num(s.acceptance_length.median if s.acceptance_length else None),
                " / ".join(f"{v:.0%}" for v in s.acceptance_by_position)
                if s.acceptance_by_position
                else "n/a",
                " / ".join(str(n) for n in s.acceptance_histogram) if s.acceptance_histogram else "n/a",
                ", ".join(s.acceptance_sources) or "n/a",
                str(max(cached)) if cached else "n/a",
            ]
        )
    return out


def markdown_table(header: tuple[str, ...], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]
    return "\n".join(lines)


def markdown(profile: str, sets: list[RunSet], gates: list[GateResult] | None = None) -> str:
    parts = [
        markdown_table(COLUMNS, rows(profile, sets)),
        "",
        markdown_table(DETAIL_COLUMNS, detail_rows(profile, sets)),
    ]
    parts += notes(sets)
    failed = [s for s in sets if s.error]
    for run_set in failed:
        parts += ["", f"Stopped at {run_set.plan.label}: {run_set.error}"]
    if gates:
        parts += [
            "",
            markdown_table(
                ("Shape", "Concurrency", "Metric", "Expected", "Measured", "Result"), gate_rows(gates)
            ),
        ]
    return "\n".join(parts) + "\n"


def notes(sets: list[RunSet]) -> list[str]:
    """Lines under the tables for what the figures alone do not show."""
    out: list[str] = []
    for run_set in sets:
        summary = run_set.summary()
        gap = summary.acceptance_max_disagreement
        if gap is not None and gap > DISAGREEMENT_NOTE:
            out += [
                "",
                f"{run_set.plan.label}: per-response acceptance and the server's counters differ by up to "
                f"{gap:.1%}; the per-response figure is reported (other traffic moves the counters).",
            ]
    if any(s.runs for s in sets) and all(r.cached_tokens is None for s in sets for r in s.runs):
        out += [
            "",
            "The server reported no cached prompt tokens, so prefix-cache reuse could not be ruled out "
            "(vLLM reports them with --enable-prompt-tokens-details).",
        ]
    return out


def gate_rows(gates: list[GateResult]) -> list[list[str]]:
    return [
        [
            g.shape,
            str(g.concurrency),
            f"{g.statistic.replace('_', ' ')} {g.metric}",
            f"{g.expected:g}",
            _num(g.measured),
            "pass" if g.passed else f"FAIL (>{g.tolerance:.0%} off)",
        ]
        for g in gates
    ]


def rich_tables(profile: str, sets: list[RunSet], gates: list[GateResult] | None = None) -> list[Table]:
    main = Table(title=f"smoke: {profile}", title_justify="left")
    for i, name in enumerate(COLUMNS):
        main.add_column(name, justify="left" if i < 2 else "right")
    for row in rows(profile, sets):
        main.add_row(*row)
    detail = Table(title="details", title_justify="left")
    for i, name in enumerate(DETAIL_COLUMNS):
        detail.add_column(name, justify="left" if i < 2 else "right")
    for row in detail_rows(profile, sets):
        detail.add_row(*row)
    tables = [main, detail]
    if gates:
        gate_table = Table(title="gate", title_justify="left")
        for name in ("Shape", "Concurrency", "Metric", "Expected", "Measured", "Result"):
            gate_table.add_column(name)
        for row in gate_rows(gates):
            style = "green" if row[-1] == "pass" else "bold red"
            gate_table.add_row(*row, style=style)
        tables.append(gate_table)
    return tables
