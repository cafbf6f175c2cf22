"""`gh200 patches check` says per carried patch how its runtime test went, or why it did not run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gh200.images import patches, vllm_venv


def _report() -> dict[str, Any]:
    return {
        "ok": True,
        "patches": [
            {"id": "glm52-mtp-quant", "status": "carried"},
            {"id": "dsv4-draft-hf-config-path", "status": "carried"},
            {"id": "dsv4-mtp-eh-proj-prefix", "status": "upstream"},
        ],
    }


def test_a_wheel_not_cached_yet_is_said_per_patch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GH200_CACHE", str(tmp_path))
    report = _report()
    patches._add_runtime(report, "0.33.0")
    assert report["ok"] is True
    assert report["runtime"]["state"] == "not-cached"
    assert "not built yet" in report["runtime"]["detail"]
    assert [row.get("runtime") for row in report["patches"]] == ["not-cached", "not-cached", None]


def test_a_failed_runtime_test_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    ran = {
        "state": "ran",
        "patches": {
            "glm52-mtp-quant": {"passed": False, "detail": "loading failed: KeyError"},
            "dsv4-draft-hf-config-path": {"passed": True, "detail": "ok"},
        },
    }
    monkeypatch.setattr(vllm_venv, "runtime_check", lambda series: ran)
    report = _report()
    patches._add_runtime(report, "0.33.0")
    assert report["ok"] is False
    rows = {row["id"]: row for row in report["patches"]}
    assert rows["glm52-mtp-quant"]["runtime"] == "failed"
    assert rows["glm52-mtp-quant"]["runtime_detail"] == "loading failed: KeyError"
    assert rows["dsv4-draft-hf-config-path"]["runtime"] == "passed"


def test_other_versions_have_no_pinned_wheel() -> None:
    report = _report()
    patches._add_runtime(report, "0.34.0")
    assert report["runtime"]["state"] == "no-wheel" and report["ok"] is True
