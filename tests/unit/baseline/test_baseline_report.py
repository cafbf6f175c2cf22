"""`gh200 report`: what the page and the PNGs carry, and that the page needs nothing from a network.

The page is opened in a real headless Chromium by tests/engine/baseline/test_report_chromium.py.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from baseline_fakes import STEADY, history, record_run, run_set

from gh200.baseline.report import collect, markers, write_report
from gh200.baseline.store import accept, resolve_run, this_host
from gh200.bench.results import read_records

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GH200_STATE", str(tmp_path / "state"))
    path = tmp_path / "state" / "results" / "smoke.jsonl"
    history(path)
    return path


def test_groups_markers_baseline_and_expected(results: Path) -> None:
    accept(resolve_run("0001aaaa", results))
    (group,) = collect(read_records(results), this_host())
    assert group.title == "glm52-awq-mtp3 2048:512 c1" and len(group.records) == 8
    assert group.baseline is not None and group.baseline.run_id == "0001aaaa0000"
    # The profile's expected value at this shape: the part-3 headline.
    assert [(m, v) for m, v, _ in group.expected] == [("output_tok_s", 43.39)]
    assert markers(group.records) == [
        (4, ["driver 570.86.15 -> 575.51.03"]),
        (6, ["image gh200/vllm:v0.33.0-p1 -> gh200/vllm:v0.33.0-p2"]),
    ]


def test_page_is_self_contained_and_embeds_the_pngs(results: Path, tmp_path: Path) -> None:
    accept(resolve_run("0001aaaa", results))
    out = tmp_path / "report"
    written = write_report(out, results)
    page = written.html.read_text()
    (png,) = written.pngs
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 20_000
    assert base64.b64encode(data).decode() in page
    # Nothing fetched at view time: no scripts, stylesheets, fonts or images by URL.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert "driver 570.86.15 -&gt; 575.51.03" in page
    assert "output_tok_s 43.39" in page
    # The newest run set is 12% slower than the accepted one, after a driver upgrade and a new image.
    assert "<b>regression</b>" in page and "output_tok_s fell 12.0%" in page
    assert "changed: image gh200/vllm:v0.33.0-p1 -&gt; gh200/vllm:v0.33.0-p2, driver" in page


def test_only_this_hosts_run_sets_and_bad_input_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gh200_cli: Callable[..., tuple[int, str, str]]
) -> None:
    monkeypatch.setenv("GH200_STATE", str(tmp_path / "state"))
    path = tmp_path / "elsewhere.jsonl"
    record_run(path, "abcd00000001", [run_set(STEADY)])
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    lines[0]["host"]["hostname"] = "another-host"
    path.write_text(json.dumps(lines[0]) + "\n")
    out = tmp_path / "report"
    code, _, err = gh200_cli(["report", "--results", str(path), "--out", str(out)])
    assert code == 2 and "no recorded run sets of host" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()
