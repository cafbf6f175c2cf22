"""containers/vllm/apply_patches.py on small synthetic trees: strict hunks, offsets, reports."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from applier import load_applier

ap = load_applier()

ORIGINAL = "".join(f"# line {i}\n" for i in range(1, 21))
PATCH = """header text is ignored
--- a/vllm/mod.py
+++ b/vllm/mod.py
@@ -4,3 +4,4 @@
 # line 4
 # line 5
+# inserted after 5
 # line 6
@@ -15,3 +16,3 @@
 # line 15
-# line 16
+# line sixteen
 # line 17
"""


def _tree(tmp_path: Path, text: str = ORIGINAL) -> Path:
    root = tmp_path / "root"
    (root / "vllm").mkdir(parents=True)
    (root / "vllm" / "mod.py").write_text(text)
    (root / "vllm" / "_version.py").write_text("__version__ = version = '0.33.0+cu130'\n")
    return root


def _series(tmp_path: Path, patch: str = PATCH, extra: str = "") -> Path:
    directory = tmp_path / "patches"
    directory.mkdir(exist_ok=True)
    (directory / "0001-x.patch").write_text(patch)
    (directory / "series.yaml").write_text(
        "vllm_sdists: {}\npatches:\n"
        "  - {id: x, file: 0001-x.patch, status: carried, vllm: ['0.33.0'], upstream: none,"
        " smoke_imports: [vllm.mod]}\n" + extra
    )
    return directory / "series.yaml"


def test_applies_with_offset_and_reports(tmp_path: Path) -> None:
    root = _tree(tmp_path, "# new first line\n" + ORIGINAL)  # every hunk is one line later
    report = ap.run(_series(tmp_path), root, version=None, check_only=False)
    assert report["vllm"] == "0.33.0"  # the local version part is dropped
    assert report["ok"], json.dumps(report)
    text = (root / "vllm" / "mod.py").read_text()
    assert "# line 5\n# inserted after 5\n# line 6\n" in text
    assert "# line sixteen\n" in text and "# line 16\n" not in text
    assert list((root / "vllm" / "__pycache__").glob("mod.*.pyc"))


def test_check_only_changes_nothing(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    report = ap.run(_series(tmp_path), root, version=None, check_only=True)
    assert report["patches"][0]["result"] == "applies"
    assert (root / "vllm" / "mod.py").read_text() == ORIGINAL


def test_second_run_says_already_applied(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    series = _series(tmp_path)
    ap.run(series, root, version=None, check_only=False)
    again = ap.run(series, root, version=None, check_only=False)
    assert again["patches"][0]["result"] == "already-applied"
    assert again["ok"]


def test_conflict_names_file_and_hunk_and_leaves_file_alone(tmp_path: Path) -> None:
    changed = ORIGINAL.replace("line 16\n", "line 16 changed upstream\n")
    root = _tree(tmp_path, changed)
    report = ap.run(_series(tmp_path), root, version=None, check_only=False)
    row = report["patches"][0]
    assert report["ok"] is False and row["result"] == "conflict"
    assert row["detail"].startswith("vllm/mod.py: hunk 2 @@ -15,3 +16,3 @@ does not match")
    assert (root / "vllm" / "mod.py").read_text() == changed  # all hunks or none


def test_cli_exit_codes_and_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _tree(tmp_path, ORIGINAL.replace("line 5\n", "line five\n"))
    series = _series(tmp_path)
    assert ap.main(["--series", str(series), "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert "error: patch 0001-x.patch (x) does not apply: vllm/mod.py: hunk 1" in err
    assert ap.main(["--series", str(tmp_path / "missing.yaml"), "--root", str(root)]) in (1, 2)
    assert ap.main(["--series", str(series), "--root", str(tmp_path / "nothing")]) == 2
    root2 = _tree(tmp_path / "b")
    assert ap.main(["--series", str(series), "--root", str(root2), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["touched"] == ["vllm/mod.py"]


def test_a_vllm_the_series_does_not_list_fails_the_build(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    report = ap.run(_series(tmp_path), root, version="0.34.0", check_only=False)
    assert report["patches"][0]["result"] == "not-for-version"
    assert report["ok"] is False
    assert "lists no patch for vLLM 0.34.0" in report["series_error"]
    assert (root / "vllm" / "mod.py").read_text() == ORIGINAL


def test_every_tries_unlisted_entries(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    report = ap.run(_series(tmp_path), root, version="0.34.0", check_only=True, every=True)
    row = report["patches"][0]
    assert (row["result"], row["listed"]) == ("applies", False)
    assert report["ok"] is True


def test_upstream_evidence_is_looked_up_inside_the_function(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "vllm" / "up.py").write_text(
        "class A:\n    def f(self):\n        return 'the fix'\n\ndef g():\n    return 'elsewhere'\n"
    )
    extra = (
        "  - {id: u1, file: null, status: upstream, vllm: ['0.33.0'], upstream: pr,"
        " file_upstream: vllm/up.py, function: A.f, evidence: ['the fix']}\n"
        "  - {id: u2, file: null, status: upstream, vllm: ['0.33.0'], upstream: pr,"
        " file_upstream: vllm/up.py, function: A.f, evidence: ['elsewhere']}\n"
        "  - {id: u3, file: null, status: upstream, vllm: ['0.33.0'], upstream: pr,"
        " file_upstream: vllm/up.py, function: A.h, evidence: ['x']}\n"
    )
    report = ap.run(_series(tmp_path, extra=extra), root, version=None, check_only=True)
    results = {row["id"]: (row["result"], row["detail"]) for row in report["patches"]}
    assert results["u1"] == ("upstream", "vllm/up.py:A.f (lines 2-3)")
    assert results["u2"][0] == "missing" and "lacks 'elsewhere'" in results["u2"][1]
    assert results["u3"] == ("missing", "vllm/up.py has no A.h")
    assert report["ok"] is False


def test_rewrites_by_rename_so_hard_linked_pristine_copies_stay_intact(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    pristine = tmp_path / "pristine.py"
    os.link(root / "vllm" / "mod.py", pristine)
    ap.run(_series(tmp_path), root, version=None, check_only=False)
    assert pristine.read_text() == ORIGINAL
    assert (root / "vllm" / "mod.py").read_text() != ORIGINAL


@pytest.mark.parametrize(
    "bad",
    [
        "no hunks at all\n",
        "--- a/vllm/mod.py\n+++ b/vllm/mod.py\n@@ -4,3 +4,4 @@\n line 4\n",  # truncated
        "--- a/x\n+++ /dev/null\n@@ -1 +0,0 @@\n-x\n",  # deletions are not ours to make
        "--- a/../etc/passwd\n+++ b/../etc/passwd\n@@ -1 +1 @@\n-a\n+b\n",
    ],
)
def test_malformed_patches_are_bad_input(tmp_path: Path, bad: str) -> None:
    root = _tree(tmp_path)
    with pytest.raises(ap.SeriesError):
        ap.run(_series(tmp_path, bad), root, version=None, check_only=True)


def test_no_newline_at_end_of_file(tmp_path: Path) -> None:
    root = _tree(tmp_path, "a\nb\nc")
    patch = (
        "--- a/vllm/mod.py\n+++ b/vllm/mod.py\n@@ -2,2 +2,2 @@\n b\n-c\n"
        "\\ No newline at end of file\n+C\n\\ No newline at end of file\n"
    )
    report = ap.run(_series(tmp_path, patch), root, version=None, check_only=False)
    assert report["ok"], json.dumps(report)
    assert (root / "vllm" / "mod.py").read_text() == "a\nb\nC"


def test_a_patch_that_breaks_python_fails_at_byte_compile(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    patch = "--- a/vllm/mod.py\n+++ b/vllm/mod.py\n@@ -1,1 +1,1 @@\n-# line 1\n+def broken(:\n"
    report = ap.run(_series(tmp_path, patch), root, version=None, check_only=False)
    assert report["ok"] is False
    assert report["compile_error"].startswith("vllm/mod.py: ")
