"""`gh200 report`: this host's benchmark history as one self-contained HTML page, plus the plots as PNG.

Per profile, shape and concurrency: output tok/s, TPOT, TTFT and acceptance of every recorded run set
in time order, each as its median with the p10-p90 band of its runs; a dotted line where the image,
server version, driver, CUDA or kernel changed between two run sets (named on the plot and in the
table); the accepted baseline's median as a dashed line (its run set starred); the posts' expected
values from the profile as reference lines; and the gate's verdict of the newest run set against
the baseline. The page loads nothing at view time: styles inline, plots as base64 PNG.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gh200.baseline.facts import MARKER_FIELDS, fact_changes, record_facts
from gh200.baseline.store import (
    Baseline,
    find_baseline,
    record_host,
    set_key,
    this_host,
)
from gh200.bench.results import default_results_path, read_records
from gh200.errors import BadInput, Gh200Error
from gh200.fsutil import atomic_write_bytes, atomic_write_text
from gh200.paths import state_dir

# (record field, panel title, unit, scale for display, expected-metric name in profiles)
MARKER_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
PANELS = (
    ("output_tok_s", "Output tok/s", "tok/s", 1.0, "output_tok_s"),
    ("tpot_ms", "TPOT", "ms", 1.0, "tpot_ms"),
    ("ttft_ms", "TTFT", "ms", 1.0, None),
    ("acceptance", "Draft acceptance", "%", 100.0, "acceptance"),
)


@dataclass
class Group:
    profile: str | None
    shape: str
    concurrency: int
    records: list[dict[str, Any]] = field(default_factory=list)
    baseline: Baseline | None = None
    expected: list[tuple[str, float, str]] = field(default_factory=list)  # (metric, value, source)

    @property
    def title(self) -> str:
        who = self.profile or f"url {self.records[0].get('url', '?')}"
        return f"{who} {self.shape} c{self.concurrency}"

    @property
    def slug(self) -> str:
        return re.sub(
            r"[^A-Za-z0-9_.-]+", "_", f"{self.profile or 'url'}--{set_key(self.shape, self.concurrency)}"
        )


@dataclass
class ReportFiles:
    html: Path
    pngs: list[Path]
    groups: int
    run_sets: int

    def as_json(self) -> dict[str, Any]:
        return {
            "changed": True,
            "html": str(self.html),
            "pngs": [str(p) for p in self.pngs],
            "groups": self.groups,
            "run_sets": self.run_sets,
        }


def _stat(record: dict[str, Any], metric: str, which: str) -> float | None:
    summary = record.get("summary")
    stats = summary.get(metric) if isinstance(summary, dict) else None
    value = stats.get(which) if isinstance(stats, dict) else None
    return float(value) if isinstance(value, int | float) else None


def _expected(profile: str | None, shape: str, concurrency: int) -> list[tuple[str, float, str]]:
    if not profile:
        return []
    from gh200.profiles import load_profile

    try:
        loaded = load_profile(profile)
    except Gh200Error:
        return []  # a profile renamed or removed since, or a test variant: no reference line
    return [
        (e.metric, e.value, e.source)
        for e in loaded.expected
        if e.shape == shape and e.concurrency == concurrency and e.statistic == "median"
    ]


def collect(records: list[dict[str, Any]], host: str) -> list[Group]:
    groups: dict[tuple[str | None, str, int], Group] = {}
    for record in records:
        if record_host(record) != host or not record.get("runs"):
            continue
        key = (record.get("profile"), str(record.get("shape")), int(record.get("concurrency") or 1))
        groups.setdefault(key, Group(*key)).records.append(record)
    out = sorted(groups.values(), key=lambda g: (g.profile or "~", g.shape, g.concurrency))
    for group in out:
        group.records.sort(key=lambda r: str(r.get("time")))
        if group.profile:
            group.baseline = find_baseline(host, group.profile, group.shape, group.concurrency)
        group.expected = _expected(group.profile, group.shape, group.concurrency)
    return out


def markers(records: Sequence[dict[str, Any]]) -> list[tuple[int, list[str]]]:
    """(index of the first run set after a change, what changed) for image/server/driver/kernel changes."""
    return [
        (i, changes)
        for i in range(1, len(records))
        if (changes := fact_changes(records[i - 1], records[i], MARKER_FIELDS))
    ]


def _time_label(record: dict[str, Any], pattern: str = "%m-%d %H:%M") -> str:
    try:
        return dt.datetime.fromisoformat(str(record.get("time"))).strftime(pattern)
    except ValueError:
        return "?"


def plot_group(group: Group) -> bytes:
    """The group's four panels as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = group.records
    xs = list(range(len(records)))
    changes = markers(records)
    base_index = next(
        (i for i, r in enumerate(records) if group.baseline and r.get("run_id") == group.baseline.run_id),
        None,
    )
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.8), dpi=100, sharex=True)
    handles: dict[str, Any] = {}
    for ax, (metric, title, unit, scale, expected_name) in zip(axes.flat, PANELS, strict=True):
        med = [_stat(r, metric, "median") for r in records]
        low = [_stat(r, metric, "p10") for r in records]
        high = [_stat(r, metric, "p90") for r in records]
        have = [i for i, v in enumerate(med) if v is not None]
        ax.set_title(title if unit in title else f"{title} ({unit})", fontsize=10, loc="left")
        ax.grid(True, alpha=0.3)
        if not have:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="grey")
            continue
        ys = [med[i] * scale for i in have]  # type: ignore[operator]
        band = [i for i in have if low[i] is not None and high[i] is not None]
        ax.fill_between(
            band,
            [low[i] * scale for i in band],  # type: ignore[operator]
            [high[i] * scale for i in band],  # type: ignore[operator]
            color="tab:blue",
            alpha=0.18,
            linewidth=0,
            label="p10-p90 of runs",
        )
        ax.plot(have, ys, "o-", color="tab:blue", markersize=4, linewidth=1.4, label="median")
        if group.baseline is not None:
            value = group.baseline.median(metric)
            if value is not None:
                ax.axhline(value * scale, color="tab:green", linestyle="--", linewidth=1.2, label="baseline")
            if base_index is not None and med[base_index] is not None:
                ax.plot(
                    [base_index],
                    [med[base_index] * scale],  # type: ignore[operator]
                    "*",
                    color="tab:green",
                    markersize=13,
                    linestyle="none",
                    label="baseline run set",
                )
        for name, value, _source in group.expected:
            if name == expected_name:
                ax.axhline(
                    value * scale, color="tab:red", linestyle="-.", linewidth=1.2, label="post's expected"
                )
        for letter, (index, _what) in zip(MARKER_LETTERS, changes, strict=False):
            ax.axvline(index - 0.5, color="tab:purple", linestyle=":", linewidth=1.3)
            ax.annotate(
                letter,
                xy=(index - 0.5, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -3),
                textcoords="offset points",
                va="top",
                fontsize=9,
                fontweight="bold",
                color="tab:purple",
            )
        if metric == "acceptance":
            ax.set_ylim(0, 105)
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    step = max(1, len(xs) // 10)
    for ax in axes[1]:
        ax.set_xticks(xs[::step])
        ax.set_xticklabels([_time_label(records[i]) for i in xs[::step]], rotation=30, ha="right", fontsize=8)
        ax.set_xlabel("run sets in time order (UTC)", fontsize=8)
    fig.suptitle(group.title, fontsize=12, x=0.01, ha="left")
    notes = [
        f"{letter}: {', '.join(what)}" for letter, (_i, what) in zip(MARKER_LETTERS, changes, strict=False)
    ]
    # One legend and the change notes under the panels, where they cover no data.
    fig.legend(
        handles.values(), handles.keys(), loc="lower center", ncol=len(handles), fontsize=8, frameon=False
    )
    if notes:
        fig.text(0.01, 0.045, "changes: " + "   ".join(notes), fontsize=8, color="tab:purple", wrap=True)
    fig.tight_layout(rect=(0, 0.08 if notes else 0.05, 1, 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _fmt(value: float | None, pattern: str, scale: float = 1.0) -> str:
    return "n/a" if value is None else format(value * scale, pattern)


def _verdict_html(group: Group) -> str:
    if group.baseline is None:
        return '<p class="muted">No accepted baseline (gh200 baseline accept RUN).</p>'
    from gh200.baseline.gate import compare_runs

    newest = group.records[-1]
    verdict = compare_runs(
        group.baseline.runs,
        [r for r in newest.get("runs") or [] if isinstance(r, dict)],
        profile=group.profile or "",
        shape=group.shape,
        concurrency=group.concurrency,
        changes=fact_changes(group.baseline.record, newest),
    )
    css = {"pass": "ok", "regression": "bad", "insufficient": "muted"}[verdict.status]
    return (
        f'<p class="{css}">Newest run set {html.escape(str(newest.get("run_id")))} against the baseline '
        f"(run {html.escape(group.baseline.run_id)}, accepted {html.escape(group.baseline.accepted)}): "
        f"<b>{verdict.status}</b> - {html.escape(verdict.describe())}</p>"
    )


def _table(group: Group) -> str:
    previous: dict[str, Any] | None = None
    rows: list[str] = []
    for record in group.records:
        facts = record_facts(record)
        changed = fact_changes(previous, record) if previous is not None else []
        star = " *" if group.baseline and record.get("run_id") == group.baseline.run_id else ""
        cells = [
            html.escape(_time_label(record, "%Y-%m-%d %H:%M")),
            html.escape(str(record.get("run_id"))) + star,
            html.escape(str(facts.get("image") or "n/a")),
            html.escape(str(facts.get("server_version") or "n/a")),
            " ".join(
                (
                    _fmt(_stat(record, "output_tok_s", "median"), ".2f"),
                    f"({_fmt(_stat(record, 'output_tok_s', 'p10'), '.2f')}-"
                    f"{_fmt(_stat(record, 'output_tok_s', 'p90'), '.2f')})",
                )
            ),
            _fmt(_stat(record, "tpot_ms", "median"), ".2f"),
            _fmt(_stat(record, "ttft_ms", "median"), ".1f"),
            _fmt(_stat(record, "acceptance", "median"), ".1f", 100.0),
            str(len(record.get("runs") or [])),
            html.escape(", ".join(changed)),
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        previous = record
    titles = (
        "Time (UTC)",
        "Run",
        "Image",
        "Server",
        "Output tok/s median (p10-p90)",
        "TPOT ms",
        "TTFT ms",
        "Acceptance %",
        "Runs",
        "Changed since previous",
    )
    head = "<tr>" + "".join(f"<th>{t}</th>" for t in titles) + "</tr>"
    return f"<table>{head}{''.join(rows)}</table>"


CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1150px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.8em; margin: 0.6em 0; }
td, th { border: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } img { max-width: 100%; border: 1px solid #eee; }
.ok { color: #176f2c; } .bad { color: #b00020; } .muted { color: #777; }
.legend { font-size: 0.85em; color: #444; }
"""


def render_html(groups: list[Group], pngs: dict[str, bytes], host: str, source: Path) -> str:
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    index = "".join(
        f'<li><a href="#{html.escape(g.slug)}">{html.escape(g.title)}</a> ({len(g.records)} run sets)</li>'
        for g in groups
    )
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>gh200 benchmark history: {html.escape(host)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Benchmark history of {html.escape(host)}</h1>",
        f'<p class="muted">Generated {now} from {html.escape(str(source))}.</p>',
        '<p class="legend">Each point is one run set (one cold + warm runs): the line is its median, '
        "the band the p10-p90 of its runs. Dotted purple lines mark where the image, server version, "
        "driver, CUDA or kernel changed; the dashed green line is the accepted baseline (its run set "
        "starred); the dash-dot red line is the value the reference posts measured.</p>",
        f"<ul>{index}</ul>",
    ]
    for group in groups:
        data = base64.b64encode(pngs[group.slug]).decode("ascii")
        expected = "".join(
            f"<li>{html.escape(m)} {v:g} ({html.escape(s)})</li>" for m, v, s in group.expected
        )
        changes = "".join(
            f"<li><b>{letter}</b> before {html.escape(_time_label(group.records[i]))}: "
            f"{html.escape(', '.join(what))}</li>"
            for letter, (i, what) in zip(MARKER_LETTERS, markers(group.records), strict=False)
        )
        parts += [
            f'<h2 id="{html.escape(group.slug)}">{html.escape(group.title)}</h2>',
            _verdict_html(group),
            f'<img class="plot" alt="{html.escape(group.title)}" src="data:image/png;base64,{data}">',
            f"<p class='legend'>Changes marked on the plots:</p><ul>{changes}</ul>" if changes else "",
            f"<p class='legend'>Posts' expected values:</p><ul>{expected}</ul>" if expected else "",
            _table(group),
        ]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(
    out: Path | None = None, results: Path | None = None, host: str | None = None
) -> ReportFiles:
    """Write report.html and one PNG per group under `out` (default: the state dir's report/)."""
    source = results or default_results_path()
    host = host or this_host()
    records = read_records(source)
    groups = collect(records, host)
    if not groups:
        raise BadInput(
            f"no recorded run sets of host {host} in {source}",
            "run `gh200 smoke PROFILE` first, or pass --results FILE",
        )
    target = out or state_dir() / "report"
    pngs = {g.slug: plot_group(g) for g in groups}
    written: list[Path] = []
    for group in groups:
        path = target / "plots" / f"{group.slug}.png"
        atomic_write_bytes(path, pngs[group.slug], 0o644)
        written.append(path)
    page = target / "report.html"
    atomic_write_text(page, render_html(groups, pngs, host, source), 0o644)
    return ReportFiles(page, written, len(groups), sum(len(g.records) for g in groups))
