"""What the sweep's plot shows a reader: every measured depth as a point, p10 and p90 as capped bar
ends, the chosen depth circled without hiding its point, and a real PNG whatever the user's matplotlib
settings. (Series values, labels, ticks and the title: test_bench_sweep_helpers.py.)"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection
from matplotlib.container import ErrorbarContainer

from gh200.bench.sweep import Point, SweepResult, save_plot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _point(tokens: int, median: float, p10: float, p90: float, shape: str = "2048->512") -> Point:
    return Point(tokens, shape, 11, median, p10, p90, 0.1, 0.8, 0, 10.0)


# Part 2's Canada walk at 8192->512 (MTP-0..4 medians; the p10/p90 spread is made up): MTP-3 is kept.
PART2 = [
    _point(0, 105.9, 101.0, 108.0),
    _point(1, 152.7, 148.0, 155.5),
    _point(2, 179.9, 171.0, 183.0),
    _point(3, 193.0, 188.5, 196.0),
    _point(4, 162.1, 150.0, 170.0),
]


@pytest.fixture
def axes(plot_axes: list[Axes]) -> list[Axes]:
    """The axes save_plot draws on, kept for inspection after it has written the file."""
    return plot_axes


def _floats(values: Any) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=float).ravel()]


def _series(ax: Axes) -> list[ErrorbarContainer]:
    return [c for c in ax.containers if isinstance(c, ErrorbarContainer)]


def _ring(ax: Axes) -> PathCollection:
    (ring,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    return ring


def test_the_file_is_a_real_png_of_a_readable_size(tmp_path: Path) -> None:
    path = save_plot(SweepResult("dsv4-flash-canada", [], points=list(PART2), chosen=3), tmp_path / "s.png")
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    pixels = mpimg.imread(path)  # decodes the whole image: a truncated or mislabelled file fails here
    height, width = pixels.shape[:2]
    # Wide enough to read five depths and their bars, small enough for a report page or a terminal viewer.
    assert 600 <= width <= 1600 and 350 <= height <= 1000 and width > height
    # Not a blank canvas: the axes, bars and legend put many distinct colours on it.
    assert len({tuple(px) for row in pixels[::7, ::7] for px in row}) > 20


def test_it_stays_a_png_when_the_users_matplotlib_saves_svg_by_default(tmp_path: Path) -> None:
    # A matplotlibrc with `savefig.format: svg` (or pdf) must not turn the .png the sweep reports into SVG.
    for fmt in ("svg", "pdf"):
        with matplotlib.rc_context({"savefig.format": fmt}):
            path = save_plot(SweepResult("p", [], points=list(PART2), chosen=3), tmp_path / f"{fmt}.png")
        assert path.read_bytes()[:8] == PNG_SIGNATURE, fmt


def test_every_measured_depth_is_a_visible_point_even_with_an_empty_band(
    tmp_path: Path, axes: list[Axes]
) -> None:
    # One warm run per depth: p10 = median = p90, so the bar has no length and only the marker
    # shows that the depth was measured at all.
    points = [_point(t, m, m, m) for t, m in ((0, 20.0), (1, 24.0), (2, 23.0))]
    save_plot(SweepResult("p", [], points=points, chosen=1), tmp_path / "s.png")
    (ax,) = axes
    (series,) = _series(ax)
    data_line = series.lines[0]
    assert data_line.get_marker() not in (None, "None", "none", "", " ")
    assert data_line.get_markersize() > 0
    assert _floats(data_line.get_ydata()) == [20.0, 24.0, 23.0]


def test_bar_ends_are_capped_at_each_depths_p10_and_p90(tmp_path: Path, axes: list[Axes]) -> None:
    save_plot(SweepResult("p", [], points=list(PART2), chosen=3), tmp_path / "s.png")
    (ax,) = axes
    (series,) = _series(ax)
    caps = series.lines[1]
    # One cap line for the lower ends, one for the upper: where a reader reads p10 and p90 off the axis.
    assert len(caps) == 2
    lower, upper = (_floats(cap.get_ydata()) for cap in caps)
    assert lower == [p.p10 for p in PART2]
    assert upper == [p.p90 for p in PART2]
    assert [_floats(cap.get_xdata()) for cap in caps] == [[0, 1, 2, 3, 4]] * 2
    assert all(cap.get_markersize() > 0 and cap.get_visible() for cap in caps)


def test_the_chosen_depth_is_circled_around_its_point_not_painted_over_it(
    tmp_path: Path, axes: list[Axes]
) -> None:
    save_plot(SweepResult("p", [], points=list(PART2), chosen=3), tmp_path / "s.png")
    (ax,) = axes
    (series,) = _series(ax)
    ring = _ring(ax)
    assert _floats(ring.get_offsets()) == [3.0, 193.0]
    # The ring's outline is drawn (opaque edge, a real width) ...
    edges = np.asarray(ring.get_edgecolor())
    assert len(edges) == 1 and edges[0][3] == 1.0
    assert all(w > 0 for w in _floats(ring.get_linewidth()))
    # ... its inside is empty, so the median's marker and bar stay visible through it ...
    faces = np.asarray(ring.get_facecolor())
    assert len(faces) == 0 or all(face[3] == 0.0 for face in faces)
    # ... and it is wider than the marker it surrounds (scatter sizes are areas in points squared).
    (area,) = ring.get_sizes()
    assert math.sqrt(area) > series.lines[0].get_markersize() * 1.5


def test_no_ring_when_no_depth_was_chosen_and_no_figure_left_open(tmp_path: Path, axes: list[Axes]) -> None:
    # MTP-0 failed the rule: nothing to circle. A long sweep writes many plots; none may stay in memory.
    open_before = plt.get_fignums()
    save_plot(SweepResult("p", [], points=PART2[:1], chosen=None), tmp_path / "s.png")
    (ax,) = axes
    assert [c for c in ax.collections if isinstance(c, PathCollection)] == []
    assert plt.get_fignums() == open_before
