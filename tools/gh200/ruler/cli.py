"""`gh200 ruler` (decode ceiling from expert bytes and path bandwidths) and `gh200 probe`."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from gh200.output import console, emit_json, progress
from gh200.ruler import inputs, topology
from gh200.ruler import ruler as r


def _range_text(values: tuple[float, float], digits: int = 2) -> str:
    low, high = values
    if round(low, digits) == round(high, digits):
        return f"{low:.{digits}f}"
    return f"{low:.{digits}f}-{high:.{digits}f}"


def _bw_text(bw: r.Bandwidth) -> str:
    def one(value: float) -> str:
        return f"{value:.0f}" if value >= 100 or value.is_integer() else f"{value:.1f}"

    low, high = one(bw.low_gbps), one(bw.high_gbps)
    return low if low == high else f"{low}-{high}"


def ruler_command(
    profile: str | None = typer.Argument(None, help="Profile name or path; its model supplies the bytes."),
    *,
    model: str | None = typer.Option(None, "--model", help="Checkpoint directory, or REPO@REV."),
    routed_expert_bytes: str | None = typer.Option(
        None, "--routed-expert-bytes", help="Routed expert pool, e.g. 684GiB, 734GB or bytes."
    ),
    experts: int | None = typer.Option(None, "--experts", help="Routed experts per MoE layer."),
    active_experts: int | None = typer.Option(None, "--active-experts", help="Experts chosen per token."),
    dense_bytes: str | None = typer.Option(
        None, "--dense-bytes", help="Non-expert weights read from HBM per token (adds a column)."
    ),
    bandwidth: list[str] = typer.Option(
        [], "--bandwidth", help="NAME=GBPS or NAME=LOW:HIGH, NAME in hbm, local, remote, staged (repeatable)."
    ),
    topology_file: Path | None = typer.Option(
        None, "--topology", help="Probe topology JSON (default $GH200_STATE/topology.json if present)."
    ),
    measured: list[float] = typer.Option(
        [], "--measured", help="Measured output tok/s to place on the ruler (repeatable)."
    ),
    results: Path | None = typer.Option(
        None, "--results", help="Smoke results JSONL with median output tok/s."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Decode ceiling: active expert bytes per token over each memory path's bandwidth."""
    model_bytes = inputs.resolve_model(
        profile,
        model,
        routed_expert_bytes=routed_expert_bytes,
        experts=experts,
        active_experts=active_experts,
        dense_bytes=dense_bytes,
    )
    bandwidths, used_topology = inputs.resolve_bandwidths(bandwidth, topology_file)
    try:
        rows = r.compute_rows(model_bytes, bandwidths)
        missing = r.missing_rows(bandwidths)
        points: list[tuple[str | None, float]] = [(None, m) for m in measured]
        if results is not None:
            points += list(inputs.read_results(results))
        verdicts = [r.judge(value, rows, label) for label, value in points]
    except r.RulerInputError as err:
        raise inputs.RulerError(err.message, err.fix) from None

    if json_out:
        emit_json(
            {
                "profile": profile,
                "model": r.model_to_json(model_bytes),
                "bandwidths": {name: asdict(bw) for name, bw in bandwidths.items()},
                "topology": None if used_topology is None else str(used_topology),
                "units": r.UNITS_NOTE,
                "rows": [r.row_to_json(row) for row in rows],
                "missing_rows": [{"row": key, "path": path} for key, path in missing],
                "verdicts": [asdict(v) for v in verdicts],
            }
        )
        return

    gib, gb = model_bytes.active_expert_bytes / r.GIB, model_bytes.active_expert_bytes / r.GB
    console.print(
        f"[bold]Model[/]: {model_bytes.routed_expert_bytes / r.GIB:.2f} GiB routed experts, "
        f"{model_bytes.n_active_experts}/{model_bytes.n_routed_experts} active "
        f"-> {gib:.2f} GiB ({gb:.2f} GB) of experts per token  [dim]({model_bytes.source})[/]",
        highlight=False,
    )
    sources = sorted({bw.source for bw in bandwidths.values()})
    console.print(f"[bold]Bandwidths[/]: {'; '.join(sources)}", highlight=False)
    for name in sorted({row.path for row in rows}):
        console.print(f"  {name}: {r.PATH_LABELS[name]}", highlight=False)
    has_dense = any(row.tok_s_with_dense for row in rows)
    table = Table(title="Non-MTP decode ceiling (bandwidth only)", show_lines=False)
    for column in ("Assumption", "Expert stream", "Path GB/s", "tok/s post", "tok/s exact", "Band"):
        table.add_column(column, justify="right" if column.startswith(("tok", "Band")) else "left")
    if has_dense:
        table.add_column("+ dense @HBM", justify="right")
    for row in rows:
        cells = [
            row.assumption,
            row.stream_text,
            f"{row.path} {_bw_text(row.bandwidth)}",
            _range_text(row.tok_s_post),
            _range_text(row.tok_s_exact),
            r.band_text(row.band) + (" aggr." if row.aggregate else ""),
        ]
        if has_dense:
            cells.append("-" if row.tok_s_with_dense is None else _range_text(row.tok_s_with_dense))
        table.add_row(*cells)
    console.print(table)
    console.print(f"[dim]{r.UNITS_NOTE}[/]", highlight=False)
    for key, path in missing:
        console.print(
            f"[yellow]row {key} left out[/]: no '{path}' bandwidth (pass --bandwidth {path}=GBPS)",
            highlight=False,
        )
    for v in verdicts:
        where = f"{v.label}: " if v.label else ""
        console.print(
            f"[bold]{where}{v.measured_tok_s:.2f} tok/s[/] -> nearest '{v.nearest_assumption}': {v.message}",
            highlight=False,
        )


def _ints(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise inputs.RulerError(
            f"{flag} {text!r} is not a comma-separated list of integers", f"e.g. {flag} 0,1"
        ) from None


def probe_command(
    *,
    out: Path | None = typer.Option(
        None, "--out", help="Topology JSON to write (default $GH200_STATE/topology.json)."
    ),
    report: Path | None = typer.Option(None, "--report", help="Also write the tables as Markdown here."),
    size: str = typer.Option("1GiB", "--size", help="Host and GPU-to-GPU buffer size."),
    copy_size: str = typer.Option("2GiB", "--copy-size", help="Device copy buffer size."),
    reps: int = typer.Option(10, "--reps", help="Timed repetitions (median reported)."),
    warmup: int = typer.Option(3, "--warmup", help="Untimed repetitions first."),
    nodes: str | None = typer.Option(
        None, "--nodes", help="NUMA nodes, e.g. 0,1 (default: nodes with CPUs)."
    ),
    gpus: str | None = typer.Option(None, "--gpus", help="GPU indices, e.g. 0,1 (default: all)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Measure HBM copy, pinned host<->GPU per NUMA node and GPU<->GPU bandwidth; write a topology file."""
    from gh200.fsutil import atomic_write_text
    from gh200.ruler import probe

    # Every option is checked before the progress bar is drawn or the GPUs are touched.
    size_bytes = inputs.parse_size(size)
    copy_bytes = inputs.parse_size(copy_size)
    assert size_bytes is not None and copy_bytes is not None
    probe.check_options(size_bytes=size_bytes, copy_size_bytes=copy_bytes, reps=reps, warmup=warmup)
    node_ids, gpu_ids = _ints(nodes, "--nodes"), _ints(gpus, "--gpus")
    if node_ids is not None:
        probe.check_nodes(node_ids)
    target = out or inputs.default_topology_path()
    for flag, path in (("--out", target), ("--report", report)):
        if path is not None and path.is_dir():
            raise inputs.RulerError(f"{flag} {path} is a directory", f"pass a file path to {flag}")
    with progress(enabled=not json_out) as bar:
        task = bar.add_task("probe", total=None)
        doc = probe.run_probe(
            size_bytes=size_bytes,
            copy_size_bytes=copy_bytes,
            reps=reps,
            warmup=warmup,
            nodes=node_ids,
            gpus=gpu_ids,
            step=lambda msg: bar.update(task, description=msg),
        )
    topology.write_topology(target, doc)
    if report is not None:
        atomic_write_text(report, topology.format_report(doc) + "\n")
    if json_out:
        emit_json({"changed": True, "path": str(target), "topology": doc})
        return
    _print_tables(doc)
    console.print(f"wrote {target}", highlight=False)


def _print_tables(doc: dict[str, Any]) -> None:
    specs: list[tuple[str, tuple[str, ...], list[Any]]] = [
        (
            "Memory paths (the posts' Part 1 shape)",
            ("Path", "Measured bandwidth"),
            topology.post_table_rows(doc),
        ),
        (
            "GPUs",
            ("GPU", "Name", "Memory", "NUMA node", "Nominal HBM GB/s", "Copy / nominal"),
            topology.gpu_rows(doc),
        ),
        (
            "Measurements",
            ("Measurement", "Where", "Size", "Median GB/s", "Best GB/s"),
            topology.detail_rows(doc),
        ),
    ]
    for title, headers, rows in specs:
        table = Table(title=title)
        for header in headers:
            table.add_column(header)
        for row in rows:
            table.add_row(*row)
        console.print(table)
    console.print(f"[dim]GB = 10^9 bytes; device copy counts {topology.DEVICE_COPY_CONVENTION}[/]")


def register(app: typer.Typer) -> None:
    """Add `ruler` and `probe` to the root app."""
    app.command("ruler")(ruler_command)
    app.command("probe")(probe_command)
