"""Screen output conventions: rich for people, one JSON object for scripts and Ansible."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.text import Text

# Progress and tables go to stderr so that stdout stays clean for the result (and for --json).
console = Console(stderr=True)
stdout_console = Console()


def table_console() -> Console:
    """The shared stderr console on a terminal; piped or logged output gets room for wide tables
    (rich would squeeze them into 80 columns)."""
    return console if console.is_terminal else Console(stderr=True, width=220)


def emit_json(result: Any) -> None:
    """Print one JSON object on stdout: the whole result of a --json command."""
    sys.stdout.write(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


class _NullProgress:
    """Stands in for rich Progress under --json: same calls, nothing shown."""

    def add_task(self, description: str, total: float | None = None, **_: Any) -> int:
        return 0

    def update(self, task_id: int, **_: Any) -> None:
        return None

    def advance(self, task_id: int, advance: float = 1) -> None:
        return None

    def log(self, *_: Any, **__: Any) -> None:
        return None


class _CountColumn(ProgressColumn):
    """done/total, or just done while the total is unknown."""

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text(f"{task.completed:.0f}")
        return Text(f"{task.completed:.0f}/{task.total:.0f}")


@contextlib.contextmanager
def progress(enabled: bool = True, transfer: bool = False) -> Iterator[Any]:
    """A rich progress display on stderr, or a silent stand-in when `enabled` is False."""
    if not enabled:
        yield _NullProgress()
        return
    columns: list[Any] = [SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn()]
    if transfer:
        columns += [DownloadColumn(), TransferSpeedColumn()]
    else:
        columns += [_CountColumn()]
    columns.append(TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        yield bar
