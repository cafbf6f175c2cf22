"""`gh200 models fetch|inspect|graft|verify`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from gh200.errors import BadInput
from gh200.output import console, emit_json, progress

models_app = typer.Typer(
    help="Checkpoints: fetch pinned revisions, inspect, graft the FP8 MTP layer, verify. "
    "Models live in $GH200_MODELS (default /srv/models).",
    no_args_is_help=True,
)

JSON_OPT = typer.Option(False, "--json", help="One JSON object on stdout, no progress.")
TOKEN_FILE_OPT = typer.Option(
    None,
    "--token-file",
    help="File holding the HF token (else $HF_TOKEN, $GH200_HF_TOKEN_FILE, or the HF login).",
)


class _Bar:
    """Adapts on_phase/on_bytes/on_progress callbacks to one rich task per phase.

    The display starts with the first phase, so that an early error prints alone on its line.
    """

    def __init__(self, stack: ExitStack, enabled: bool) -> None:
        self.stack = stack
        self.enabled = enabled
        self.bar: Any = None
        self.task: Any = None

    def phase(self, name: str, total: int) -> None:
        if self.bar is None:
            self.bar = self.stack.enter_context(progress(enabled=self.enabled, transfer=True))
        self.task = self.bar.add_task(name, total=total)

    def advance(self, n: int) -> None:
        if self.task is not None:
            self.bar.advance(self.task, n)

    def set(self, n: int) -> None:
        if self.task is not None:
            self.bar.update(self.task, completed=n)


@contextmanager
def _bar(as_json: bool) -> Iterator[_Bar]:
    with ExitStack() as stack:
        yield _Bar(stack, not as_json)


def _gib(n: int | None) -> str:
    """Human-readable bytes (binary units)."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.2f} {unit}"
        value /= 1024
    return f"{value:,.2f} GiB"


def _warn(warnings: list[str]) -> None:
    for w in warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)


@models_app.command("fetch")
def fetch_cmd(
    target: str = typer.Argument(..., help="A profile name, or OWNER/NAME@COMMIT."),
    *,
    include: list[str] = typer.Option(
        None, "--include", help="Allow pattern (repeatable); default: the profile's files."
    ),
    out: Path = typer.Option(
        None, "--out", help="Directory to fetch into (default: $GH200_MODELS/OWNER--NAME)."
    ),
    token_file: Path = TOKEN_FILE_OPT,
    workers: int = typer.Option(4, "--workers", min=1, max=32, help="Parallel file downloads."),
    force: bool = typer.Option(False, "--force", help="Replace a directory that holds another revision."),
    as_json: bool = JSON_OPT,
) -> None:
    """Download a pinned revision (only the files needed), check every sha256, write the manifest.

    For a profile that declares a graft, also fetch the MTP source and graft it (`models graft`).
    """
    from gh200.checkpoints import hub
    from gh200.checkpoints.fetch import fetch
    from gh200.checkpoints.profile_fetch import fetch_profile

    token = hub.resolve_token(token_file)
    with _bar(as_json) as bar:
        if hub.looks_like_ref(target):
            ref = hub.parse_ref(target)
            result = fetch(
                ref,
                include or None,
                out,
                token=token,
                max_workers=workers,
                force=force,
                on_phase=bar.phase,
                on_progress=bar.set,
            ).as_dict()
        else:
            if include or out is not None:
                raise BadInput(
                    f"--include/--out apply to OWNER/NAME@COMMIT, not to the profile {target}",
                    "a profile's files come from its model.files; its directory from $GH200_MODELS",
                )
            result = fetch_profile(
                target,
                token=token,
                max_workers=workers,
                force=force,
                on_phase=bar.phase,
                on_progress=bar.set,
                on_bytes=bar.advance,
            )
    if as_json:
        emit_json(result)
        return
    _warn(result.get("warnings", []))
    console.print(
        f"[green]{result['status']}[/] {result.get('path') or result.get('model_dir')}",
        highlight=False,
    )
    for what in result.get("repaired", []):
        console.print(f"[yellow]repaired[/] {what}", highlight=False, soft_wrap=True)


@models_app.command("inspect")
def inspect_cmd(
    target: str = typer.Argument(..., help="A model directory, or OWNER/NAME@REVISION on the hub."),
    token_file: Path = TOKEN_FILE_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Bytes by part, dtypes, quantization, layers and experts, from safetensors headers only."""
    from gh200.checkpoints import hub
    from gh200.checkpoints.inspect import inspect_checkpoint

    summary = inspect_checkpoint(target, token=hub.resolve_token(token_file))
    if as_json:
        emit_json(summary.model_dump())
        return
    table = Table(title=f"{summary.source}" + (f" @ {summary.revision}" if summary.revision else ""))
    table.add_column("part")
    table.add_column("bytes", justify="right")
    table.add_column("share", justify="right")
    for part, n in summary.bytes_by_part.items():
        if n:
            table.add_row(part, _gib(n), f"{100 * n / max(summary.total_bytes, 1):.1f}%")
    table.add_row("[bold]total", _gib(summary.total_bytes), "100%")
    console.print(table)
    facts = [
        ("architectures", ", ".join(summary.architectures) or "-"),
        ("quantization", summary.quant_method or "none"),
        ("MTP quantization", summary.mtp_quant_method or "-"),
        (
            "layers (MoE/dense)",
            f"{summary.num_hidden_layers} ({summary.num_moe_layers}/{summary.num_dense_layers})",
        ),
        ("MTP layers present", ", ".join(map(str, summary.mtp_layers)) or "none"),
        ("routed experts", f"{summary.n_routed_experts} ({summary.n_active_experts} active per token)"),
        ("dense bytes per token", _gib(summary.dense_bytes)),
        ("active bytes per token", _gib(summary.active_bytes_per_token)),
        ("dtypes", ", ".join(f"{d} {_gib(n)}" for d, n in summary.bytes_by_dtype.items())),
    ]
    for key, value in facts:
        console.print(f"{key:>24}: {value}", highlight=False)


@models_app.command("graft")
def graft_cmd(
    *,
    base: Path = typer.Option(..., "--base", help="The AWQ INT4 base model directory."),
    mtp_from: Path = typer.Option(..., "--mtp-from", help="The MTP delta repo or the full FP8 checkpoint."),
    out: Path = typer.Option(..., "--out", help="Output directory (created atomically)."),
    mtp_config: Path = typer.Option(
        None, "--mtp-config", help="The FP8 artifact's config.json, when --mtp-from has none."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an OUT made from other inputs."),
    as_json: bool = JSON_OPT,
) -> None:
    """Hard-link the base, splice the MTP layer into one new shard, merge the index and config."""
    from gh200.checkpoints.graft import graft

    with _bar(as_json) as bar:
        result = graft(
            base, mtp_from, out, mtp_config=mtp_config, force=force, on_phase=bar.phase, on_bytes=bar.advance
        )
    data = result.as_dict()
    if as_json:
        emit_json(data)
        return
    _warn(data["warnings"])
    counts = ", ".join(f"{k} x{v}" for k, v in data["suffix_counts"].items() if v > 1)
    mtp = f"{data['mtp_tensors']} MTP tensors ({_gib(data['mtp_bytes'])}) for layer(s) {data['mtp_layers']}"
    linked = f"base linked {data['base_files_linked']} files, copied {_gib(data['base_bytes_copied'])}"
    console.print(
        f"[green]{data['status']}[/] {data['out']}: {mtp}; {linked}; "
        f"dropped {data['dropped_base_entries']} base index entries",
        highlight=False,
        soft_wrap=True,
    )
    if counts:
        console.print(f"per-suffix counts: {counts}", highlight=False, soft_wrap=True)
    for what in data["repaired"]:
        console.print(f"[yellow]repaired[/] {what}", highlight=False, soft_wrap=True)


@models_app.command("verify")
def verify_cmd(
    directory: Path = typer.Argument(..., help="A fetched or grafted model directory."),
    as_json: bool = JSON_OPT,
) -> None:
    """Offline: sha256 against the fetch manifest; index vs headers; a graft's MTP layer and config."""
    from gh200.checkpoints.verify import VerifyFailed, verify_dir

    with _bar(as_json) as bar:
        report = verify_dir(directory, on_phase=bar.phase, on_bytes=bar.advance)
    if as_json:
        emit_json(report.as_dict())
    else:
        for check in report.checks:
            console.print(f"[green]ok[/] {check}", highlight=False, soft_wrap=True)
        _warn(report.warnings)
        for problem in report.problems:
            console.print(f"[red]problem[/] {problem}", highlight=False, soft_wrap=True)
    if not report.ok:
        more = f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        raise VerifyFailed(
            f"{directory}: {report.problems[0]}{more}",
            "re-run `gh200 models fetch` (or `models graft --force`) to repair it",
        )


def register(app: typer.Typer) -> None:
    """Add this job's commands to the root app."""
    app.add_typer(models_app, name="models")
