"""Fixtures shared by the bench unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def plot_axes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """The axes a plotting function draws on (every plt.subplots call), kept for inspection after it
    has written its file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[Any] = []
    subplots = plt.subplots

    def keep(*args: Any, **kwargs: Any) -> Any:
        fig, ax = subplots(*args, **kwargs)
        made.append(ax)
        return fig, ax

    monkeypatch.setattr(plt, "subplots", keep)
    yield made
