"""`gh200 report`'s page in a real headless Chromium: no console errors, no network, plots drawn.

The screenshot is kept under the test's tmp dir and copied to $GH200_ARTIFACTS when that is set.
A deliberately broken page shows that the checks see errors, requests and undrawn images.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from cdp import chromium_binary, open_page

from gh200.baseline.report import write_report
from gh200.baseline.store import accept, resolve_run

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "unit" / "baseline"))
from baseline_fakes import STEADY, history, record_run, run_set

pytestmark = pytest.mark.engine

PLOTS = """JSON.stringify(Array.from(document.images).map(i => ({
  alt: i.alt, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight,
  shown: i.getBoundingClientRect().width
})))"""


@pytest.fixture(scope="module")
def chromium() -> str:
    found = chromium_binary()
    if found is None:
        if os.environ.get("GH200_REQUIRE_ENGINE") == "1":
            pytest.fail("chromium is missing: scripts/ensure-apt.sh installs it (make setup)")
        pytest.skip("needs Debian's chromium (scripts/ensure-apt.sh installs it)")
    return found


def _keep(screenshot: Path) -> None:
    artifacts = os.environ.get("GH200_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(artifacts) / screenshot.name)


def test_report_renders_in_chromium_without_errors(
    chromium: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    monkeypatch.setenv("GH200_STATE", str(tmp_path / "state"))
    results = tmp_path / "state" / "results" / "smoke.jsonl"
    history(results)
    # A second group: local-tiny at two concurrencies' worth of history, no expected values.
    for i in range(3):
        record_run(
            results, f"{i:04d}bbbb0000", [run_set([t * (1 + 0.01 * i) for t in STEADY], acceptance=0.6)]
        )
    accept(resolve_run("0001aaaa", results))
    written = write_report(tmp_path / "report", results)
    page = open_page(written.html.as_uri(), PLOTS, tmp_path / "chromium-profile")
    shot = tmp_path / "report-screenshot.png"
    shot.write_bytes(page.screenshot)
    _keep(shot)
    assert page.console_errors == []
    assert [u for u in page.requests if not u.startswith(("file:", "data:"))] == []
    images = json.loads(page.evaluated)
    assert [i["alt"] for i in images] == ["glm52-awq-mtp3 2048:512 c1", "local-tiny 64:128 c1"]
    for image in images:
        assert image["complete"] and image["w"] >= 1000 and image["h"] >= 600 and image["shown"] > 500, image
    assert page.screenshot.startswith(b"\x89PNG") and len(page.screenshot) > 50_000


def test_the_checks_see_a_broken_page(chromium: str, tmp_path: Path) -> None:
    import json

    broken = tmp_path / "broken.html"
    broken.write_text(
        "<!doctype html><html><body>"
        '<img alt="missing" src="plots/none.png">'
        "<script>console.error('boom'); undefined_function();</script>"
        "</body></html>"
    )
    page = open_page(broken.as_uri(), PLOTS, tmp_path / "chromium-profile")
    text = " ".join(page.console_errors)
    assert "console: boom" in text and "undefined_function" in text
    (image,) = json.loads(page.evaluated)
    assert image["w"] == 0
