"""CLI commands for profiles (filled in by its issue)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this job's commands to the root app."""
