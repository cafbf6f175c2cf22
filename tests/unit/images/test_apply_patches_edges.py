"""apply_patches.py on the diff forms the happy-path tests do not use: -U0 insertions, single-line
hunk headers, timestamps after file names, several files, "No newline" markers on either side, eaten
context spaces, junk around the diff; the full report, the human output and every bad-input line."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from applier import load_applier

ap = load_applier()
ORIGINAL = "".join(f"# line {i}\n" for i in range(1, 21))


def _tree(tmp_path: Path, files: dict[str, bytes | str], version: str | None = "0.33.0") -> Path:
    root = tmp_path / "root"
    (root / "vllm").mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    if version:
        (root / "vllm" / "_version.py").write_text(f"__version__ = '{version}'\n")
    return root


def _series(tmp_path: Path, patches: dict[str, bytes | str], entries: str | None = None) -> Path:
    directory = tmp_path / "patches"
    directory.mkdir(exist_ok=True)
    for name, data in patches.items():
        (directory / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    if entries is None:
        entries = "".join(
            f"  - {{id: p{i}, file: {name}, status: carried, vllm: ['0.33.0'], upstream: none}}\n"
            for i, name in enumerate(patches)
        )
    (directory / "series.yaml").write_text("patches:\n" + entries)
    return directory / "series.yaml"


def _apply(tmp_path: Path, files: dict[str, bytes | str], patch: bytes | str) -> tuple[dict[str, Any], Path]:
    root = _tree(tmp_path, files)
    report = ap.run(_series(tmp_path, {"x.patch": patch}), root, version=None, check_only=False)
    return report, root


def test_zero_context_insertions_land_where_gnu_patch_puts_them(tmp_path: Path) -> None:
    # diff -U0: "-3,0" names the line the insertion follows; "-0,0" inserts at the top. A later hunk
    # still finds its line after the file grew.
    patch = (
        "--- a/vllm/mod.py\n+++ b/vllm/mod.py\n"
        "@@ -0,0 +1 @@\n+# top\n"
        "@@ -3,0 +5 @@\n+# after 3\n"
        "@@ -10 +12 @@\n-# line 10\n+# line ten\n"
    )
    report, root = _apply(tmp_path, {"vllm/mod.py": ORIGINAL}, patch)
    assert report["ok"], json.dumps(report)
    lines = (root / "vllm" / "mod.py").read_text().splitlines()
    assert lines[:6] == ["# top", "# line 1", "# line 2", "# line 3", "# after 3", "# line 4"]
    assert lines[11] == "# line ten" and len(lines) == 22


def test_single_line_headers_timestamps_and_names_with_spaces(tmp_path: Path) -> None:
    stamp = "\t2024-01-01 00:00:00.000000000 +0000"
    patch = f"--- a/vllm/my mod.py{stamp}\n+++ b/vllm/my mod.py{stamp}\n@@ -2 +2 @@\n-# line 2\n+# line two\n"
    report, root = _apply(tmp_path, {"vllm/my mod.py": ORIGINAL}, patch)
    assert report["ok"], json.dumps(report)
    assert report["touched"] == ["vllm/my mod.py"]
    assert (root / "vllm" / "my mod.py").read_text() == ORIGINAL.replace("# line 2\n", "# line two\n")


def test_a_prefix_on_the_new_name_is_stripped_too(tmp_path: Path) -> None:
    patch = "--- a/vllm/mod.py\n+++ a/vllm/mod.py\n@@ -2 +2 @@\n-# line 2\n+# line two\n"
    report, _ = _apply(tmp_path, {"vllm/mod.py": ORIGINAL}, patch)
    assert report["ok"] and report["touched"] == ["vllm/mod.py"]


def test_the_match_nearest_the_stated_line_wins(tmp_path: Path) -> None:
    text = "a\nb\nx\nc\n" + "".join(f"f{i}\n" for i in range(8)) + "a\nb\nx\nc\n"  # the block twice
    patch = "--- a/vllm/mod.py\n+++ b/vllm/mod.py\n@@ -13,4 +13,4 @@\n a\n b\n-x\n+X\n c\n"
    report, root = _apply(tmp_path, {"vllm/mod.py": text}, patch)
    assert report["ok"]
    assert (root / "vllm" / "mod.py").read_text() == text[: len(text) - 8] + "a\nb\nX\nc\n"
    near_first = patch.replace("@@ -13,4 +13,4 @@", "@@ -2,4 +2,4 @@")
    report, root = _apply(tmp_path / "2", {"vllm/mod.py": text}, near_first)
    assert (root / "vllm" / "mod.py").read_text() == "a\nb\nX\nc\n" + text[8:]


def test_several_files_with_a_no_newline_marker_between(tmp_path: Path) -> None:
    patch = (
        "--- a/vllm/a.py\n+++ b/vllm/a.py\n@@ -1,3 +1,3 @@\n a\n b\n-c\n+C\n\\ No newline at end of file\n"
        "--- a/vllm/b.py\n+++ b/vllm/b.py\n@@ -1 +1 @@\n-x\n+X\n"
    )
    report, root = _apply(tmp_path, {"vllm/a.py": "a\nb\nc\n", "vllm/b.py": "x\n"}, patch)
    assert report["ok"], json.dumps(report)
    assert (root / "vllm" / "a.py").read_text() == "a\nb\nC"  # only the new side lost its newline
    assert (root / "vllm" / "b.py").read_text() == "X\n"
    assert report["touched"] == ["vllm/a.py", "vllm/b.py"]
    assert report["patches"][0]["detail"] == "vllm/a.py (1 hunks), vllm/b.py (1 hunks)"
    assert [f["path"] for f in report["patches"][0]["files"]] == ["vllm/a.py", "vllm/b.py"]


def test_a_context_line_without_newline_binds_both_sides(tmp_path: Path) -> None:
    patch = (
        "--- a/vllm/mod.py\n+++ b/vllm/mod.py\n"
        "@@ -1,3 +1,3 @@\n-a\n+A\n b\n c\n\\ No newline at end of file\n"
    )
    report, root = _apply(tmp_path, {"vllm/mod.py": "a\nb\nc"}, patch)
    assert report["ok"], json.dumps(report)
    assert (root / "vllm" / "mod.py").read_text() == "A\nb\nc"


def test_an_old_line_without_newline_gains_one(tmp_path: Path) -> None:
    patch = (
        "--- a/vllm/mod.py\n+++ b/vllm/mod.py\n@@ -2,2 +2,2 @@\n b\n-c\n\\ No newline at end of file\n+C\n"
    )
    report, root = _apply(tmp_path, {"vllm/mod.py": "a\nb\nc"}, patch)
    assert report["ok"], json.dumps(report)
    assert (root / "vllm" / "mod.py").read_text() == "a\nb\nC\n"


def test_a_context_line_whose_space_an_editor_ate(tmp_path: Path) -> None:
    patch = "--- a/vllm/mod.py\n+++ b/vllm/mod.py\n@@ -1,3 +1,3 @@\n a\n\n-b\n+B\n"
    report, root = _apply(tmp_path, {"vllm/mod.py": "a\n\nb\n"}, patch)
    assert report["ok"], json.dumps(report)
    assert (root / "vllm" / "mod.py").read_text() == "a\n\nB\n"
    crlf = patch.replace("\n", "\r\n").encode()
    report, root = _apply(tmp_path / "crlf", {"vllm/mod.py": b"a\r\n\r\nb\r\n"}, crlf)
    assert report["ok"], json.dumps(report)
    assert (root / "vllm" / "mod.py").read_bytes() == b"a\r\n\r\nB\r\n"


def test_junk_around_the_diff_is_ignored(tmp_path: Path) -> None:
    patch = (
        "Subject: a fix\n\n--- notes, not a header\nmore text\n"
        "--- a/vllm/mod.py\n+++ b/vllm/mod.py\n@@ -2 +2 @@\n-# line 2\n+# line two\n"
        "--- trailing"
    )
    report, _ = _apply(tmp_path, {"vllm/mod.py": ORIGINAL}, patch)
    assert report["ok"], json.dumps(report)
    assert [f["path"] for f in report["patches"][0]["files"]] == ["vllm/mod.py"]


def test_the_last_line_after_an_empty_line_is_kept(tmp_path: Path) -> None:
    patch = "--- a/vllm/mod.py\n+++ b/vllm/mod.py\n@@ -1 +1 @@\n-first\n+FIRST\n"
    report, root = _apply(tmp_path, {"vllm/mod.py": "first\n\nlast"}, patch)
    assert report["ok"]
    assert (root / "vllm" / "mod.py").read_text() == "FIRST\n\nlast"


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (
            "--- a/x\n+++ /tmp/x\n@@ -1 +1 @@\n-a\n+b\n",
            "x.patch: unsupported target '/tmp/x' (only edits of existing files)",
        ),
        ("@@ -1 +1 @@\n-a\n+b\n", "x.patch: hunk before any file header"),
        ("--- a/x\n+++ b/x\n@@ -1 +1 @@\n?a\n+b\n", "x.patch: malformed hunk line '?a\\n' in @@ -1 +1 @@"),
        ("--- a/x\n+++ b/x\n@@ -1,2 +1,3 @@\n a\n b\n", "x.patch: hunk @@ -1,2 +1,3 @@ is truncated"),
        ("--- a/x\n+++ b/x\n", "x.patch: no hunks found"),
    ],
    ids=["absolute", "headerless", "malformed", "truncated-new-side", "header-only"],
)
def test_malformed_patches_exit_2_naming_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], patch: str, message: str
) -> None:
    root = _tree(tmp_path, {"vllm/mod.py": ORIGINAL})
    series = _series(tmp_path, {"x.patch": patch})
    assert ap.main(["--series", str(series), "--root", str(root)]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert (root / "vllm" / "mod.py").read_text() == ORIGINAL


@pytest.mark.parametrize(
    ("series_text", "message"),
    [
        ("- just a list\n", "expected a mapping with a `patches` list"),
        ("patches: {a: 1}\n", "expected a mapping with a `patches` list"),
        ("patches:\n  - {id: x, status: maybe}\n", "every patch needs an id and status carried|upstream: "),
        (
            "patches:\n  - {status: carried, file: a}\n",
            "every patch needs an id and status carried|upstream: ",
        ),
        ("patches:\n  - [x]\n", "every patch needs an id and status carried|upstream: ['x']"),
        ("patches:\n  - {id: x, status: carried}\n", "carried patch x names no file"),
        ("patches:\n  - {id: x, status: carried, file: gone.patch, vllm: ['0.33.0']}\n", "patch file "),
    ],
)
def test_bad_series_files_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], series_text: str, message: str
) -> None:
    root = _tree(tmp_path, {"vllm/mod.py": ORIGINAL})
    series = tmp_path / "series.yaml"
    series.write_text(series_text)
    assert ap.main(["--series", str(series), "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    if message == "patch file ":
        assert err == f"error: patch file {tmp_path / 'gone.patch'} is missing\n"
    elif not message.startswith(("every", "carried")):
        assert err == f"error: {series}: {message}\n"


def test_a_missing_series_or_version_or_vllm_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _tree(tmp_path, {"vllm/mod.py": ORIGINAL}, version=None)
    series = _series(
        tmp_path, {"x.patch": "--- a/vllm/mod.py\n+++ b/vllm/mod.py\n@@ -1 +1 @@\n-# line 1\n+# one\n"}
    )
    assert ap.main(["--series", str(tmp_path / "none.yaml"), "--root", str(root)]) == 2
    assert capsys.readouterr().err == f"error: series file {tmp_path / 'none.yaml'} does not exist\n"
    assert ap.main(["--series", str(series), "--root", str(root)]) == 2
    assert capsys.readouterr().err == (
        f"error: cannot tell the vLLM version under {root} (no vllm/_version.py); pass --vllm-version\n"
    )
    # --vllm-version stands in for the missing file.
    assert ap.main(["--series", str(series), "--root", str(root), "--vllm-version", "0.33.0"]) == 0
    # Without --root the applier looks for an importable vllm package, and says so when there is none.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if not (Path(p) / "vllm").is_dir()])
    assert ap.main(["--series", str(series)]) == 2
    assert capsys.readouterr().err == "error: no importable vllm package here; pass --root\n"


def test_without_root_the_importable_vllm_is_patched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _tree(tmp_path, {"vllm/__init__.py": "", "vllm/mod.py": ORIGINAL})
    series = _series(
        tmp_path, {"x.patch": "--- a/vllm/mod.py\n+++ b/vllm/mod.py\n@@ -1 +1 @@\n-# line 1\n+# one\n"}
    )
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    assert ap.main(["--series", str(series)]) == 0
    assert (root / "vllm" / "mod.py").read_text().startswith("# one\n")


def test_versions_read_from_the_build_file(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "vllm").mkdir(parents=True)
    assert ap.vllm_version(root) is None
    for text, version in (
        ("__version__ = version = '0.33.0+cu130'\n", "0.33.0"),
        ('x = 1\n__version__ = "0.34.1"\n', "0.34.1"),
        ("VERSION = '1'\n", None),
    ):
        (root / "vllm" / "_version.py").write_text(text)
        assert ap.vllm_version(root) == version


def _full_series(tmp_path: Path) -> tuple[Path, Path]:
    files = {
        "vllm/a.py": "a1\na2\n",
        "vllm/b.py": "b1\nB2\n",  # already patched
        "vllm/c.py": "c1\nc2\n",
        "vllm/up.py": "import os\n\n\nasync def fixed():\n    return 'the fix'\n",
    }
    root = _tree(tmp_path, files)
    patches = {
        "a.patch": "--- a/vllm/a.py\n+++ b/vllm/a.py\n@@ -2 +2 @@\n-a2\n+A2\n",
        "b.patch": "--- a/vllm/b.py\n+++ b/vllm/b.py\n@@ -2 +2 @@\n-b2\n+B2\n",
        "part.patch": "--- a/vllm/b.py\n+++ b/vllm/b.py\n@@ -2 +2 @@\n-b2\n+B2\n"
        "--- a/vllm/c.py\n+++ b/vllm/c.py\n@@ -2 +2 @@\n-c2\n+C2\n",
        "old.patch": "--- a/vllm/c.py\n+++ b/vllm/c.py\n@@ -1 +1 @@\n-c1\n+C1\n",
    }
    entries = (
        "  - {id: a, file: a.patch, status: carried, vllm: ['0.33.0'], upstream: none}\n"
        "  - {id: b, file: b.patch, status: carried, vllm: ['0.33.0'], upstream: pr1}\n"
        "  - {id: part, file: part.patch, status: carried, vllm: ['0.33.0'], upstream: none}\n"
        "  - {id: old, file: old.patch, status: carried, vllm: ['0.32.0', '0.32.1'], upstream: none}\n"
        "  - {id: up, status: upstream, vllm: ['0.33.0'], upstream: pr2, file_upstream: vllm/up.py,"
        " function: fixed, evidence: ['the fix']}\n"
        "  - {id: whole, status: upstream, vllm: ['0.33.0'], upstream: pr3, file_upstream: vllm/up.py,"
        " evidence: ['import os']}\n"
        "  - {id: gone, status: upstream, upstream: pr4, file_upstream: vllm/none.py}\n"
        "  - {id: nofile, status: upstream, upstream: pr5}\n"
    )
    return root, _series(tmp_path, patches, entries)


def test_the_full_report(tmp_path: Path) -> None:
    root, series = _full_series(tmp_path)
    report = ap.run(series, root, version=None, check_only=True)
    assert report == {
        "vllm": "0.33.0",
        "root": str(root),
        "check_only": True,
        "touched": [],
        "ok": False,
        "patches": [
            {
                "id": "a",
                "file": "a.patch",
                "status": "carried",
                "upstream": "none",
                "vllm": ["0.33.0"],
                "listed": True,
                "result": "applies",
                "detail": "vllm/a.py (1 hunks)",
                "files": [{"path": "vllm/a.py", "state": "applied", "detail": "1 hunks"}],
            },
            {
                "id": "b",
                "file": "b.patch",
                "status": "carried",
                "upstream": "pr1",
                "vllm": ["0.33.0"],
                "listed": True,
                "result": "already-applied",
                "detail": "the patched code is already present",
                "files": [
                    {"path": "vllm/b.py", "state": "already", "detail": "the patched code is already present"}
                ],
            },
            {
                "id": "part",
                "file": "part.patch",
                "status": "carried",
                "upstream": "none",
                "vllm": ["0.33.0"],
                "listed": True,
                "result": "conflict",
                "detail": "partly present: vllm/b.py",
                "files": [
                    {
                        "path": "vllm/b.py",
                        "state": "already",
                        "detail": "the patched code is already present",
                    },
                    {"path": "vllm/c.py", "state": "applied", "detail": "1 hunks"},
                ],
            },
            {
                "id": "old",
                "file": "old.patch",
                "status": "carried",
                "upstream": "none",
                "vllm": ["0.32.0", "0.32.1"],
                "listed": False,
                "result": "not-for-version",
                "detail": "listed for 0.32.0, 0.32.1",
            },
            {
                "id": "up",
                "file": None,
                "status": "upstream",
                "upstream": "pr2",
                "vllm": ["0.33.0"],
                "listed": True,
                "result": "upstream",
                "detail": "vllm/up.py:fixed (lines 4-5)",
            },
            {
                "id": "whole",
                "file": None,
                "status": "upstream",
                "upstream": "pr3",
                "vllm": ["0.33.0"],
                "listed": True,
                "result": "upstream",
                "detail": "vllm/up.py: (lines 1-6)",
            },
            {
                "id": "gone",
                "file": None,
                "status": "upstream",
                "upstream": "pr4",
                "vllm": [],
                "listed": False,
                "result": "not-for-version",
                "detail": "listed for no version",
            },
            {
                "id": "nofile",
                "file": None,
                "status": "upstream",
                "upstream": "pr5",
                "vllm": [],
                "listed": False,
                "result": "not-for-version",
                "detail": "listed for no version",
            },
        ],
    }
    every = ap.run(series, root, version=None, check_only=True, every=True)
    rows = {row["id"]: (row["result"], row["detail"]) for row in every["patches"]}
    assert rows["gone"] == ("missing", "vllm/none.py does not exist in this vLLM")
    assert rows["nofile"] == ("missing", "(no file_upstream) does not exist in this vLLM")
    assert rows["old"] == ("applies", "vllm/c.py (1 hunks)")
    # An explicit version wins over the tree's own.
    assert ap.run(series, root, version="0.32.1", check_only=True)["patches"][3]["listed"] is True


def test_human_output_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, series = _full_series(tmp_path)
    assert ap.main(["--series", str(series), "--root", str(root), "--check", "--every"]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"gh200 patches: check series for vLLM 0.33.0 under {root}",
        f"  {'a':<32} {'applies':<16} vllm/a.py (1 hunks)",
        f"  {'b':<32} {'already-applied':<16} the patched code is already present",
        f"  {'part':<32} {'conflict':<16} partly present: vllm/b.py",
        f"  {'old':<32} {'applies':<16} vllm/c.py (1 hunks)",
        f"  {'up':<32} {'upstream':<16} vllm/up.py:fixed (lines 4-5)",
        f"  {'whole':<32} {'upstream':<16} vllm/up.py: (lines 1-6)",
        f"  {'gone':<32} {'missing':<16} vllm/none.py does not exist in this vLLM",
        f"  {'nofile':<32} {'missing':<16} (no file_upstream) does not exist in this vLLM",
    ]
    assert err.splitlines() == [
        "error: patch part.patch (part) does not apply: partly present: vllm/b.py",
        "error: upstream fix gone is missing: vllm/none.py does not exist in this vLLM",
        "error: upstream fix nofile is missing: (no file_upstream) does not exist in this vLLM",
    ]
    assert (root / "vllm" / "a.py").read_text() == "a1\na2\n"  # --check changed nothing


def test_human_output_of_an_apply_and_of_a_broken_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _tree(tmp_path, {"vllm/mod.py": ORIGINAL})
    good = "--- a/vllm/mod.py\n+++ b/vllm/mod.py\n@@ -1 +1 @@\n-# line 1\n+# one\n"
    series = _series(tmp_path, {"x.patch": good})
    assert ap.main(["--series", str(series), "--root", str(root)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == f"gh200 patches: apply series for vLLM 0.33.0 under {root}"
    assert out.splitlines()[-1] == "  patched and byte-compiled: vllm/mod.py" and err == ""
    root2 = _tree(tmp_path / "2", {"vllm/mod.py": ORIGINAL})
    broken = _series(tmp_path / "2", {"x.patch": good.replace("+# one", "+def (:")})
    assert ap.main(["--series", str(broken), "--root", str(root2)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: byte-compiling a patched file failed: vllm/mod.py: ")
    root3 = _tree(tmp_path / "3", {"vllm/mod.py": ORIGINAL})
    assert ap.main(["--series", str(series), "--root", str(root3), "--vllm-version", "9.9"]) == 1
    out, err = capsys.readouterr()
    assert err == (
        "error: the series lists no patch for vLLM 9.9: check it with `gh200 patches check --vllm 9.9` "
        "and list the version in series.yaml\n"
    )
    assert f"  {'p0':<32} {'not-for-version':<16} listed for 0.33.0" in out.splitlines()


def test_patches_in_series_order_may_edit_the_same_file(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"vllm/mod.py": "x\n"})
    series = _series(
        tmp_path,
        {
            "1.patch": "--- a/vllm/mod.py\n+++ b/vllm/mod.py\n@@ -1 +1 @@\n-x\n+y\n",
            "2.patch": "--- a/vllm/mod.py\n+++ b/vllm/mod.py\n@@ -1 +1 @@\n-y\n+z\n",
        },
    )
    report = ap.run(series, root, version=None, check_only=False)
    assert report["ok"] and report["touched"] == ["vllm/mod.py"]
    assert (root / "vllm" / "mod.py").read_text() == "z\n"


def test_a_rewrite_keeps_the_mode_and_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch = "--- a/vllm/mod.py\n+++ b/vllm/mod.py\n@@ -1 +1 @@\n-# line 1\n+# one\n"
    root = _tree(tmp_path, {"vllm/mod.py": ORIGINAL})
    os.chmod(root / "vllm" / "mod.py", 0o640)
    series = _series(tmp_path, {"x.patch": patch})
    assert ap.run(series, root, version=None, check_only=False)["ok"]
    assert (root / "vllm" / "mod.py").stat().st_mode & 0o7777 == 0o640
    assert sorted(p.name for p in (root / "vllm").iterdir()) == ["__pycache__", "_version.py", "mod.py"]
    # A failed rename leaves the original and no temporary file behind.
    root2 = _tree(tmp_path / "2", {"vllm/mod.py": ORIGINAL})

    def refuse(src: str, dst: str) -> None:
        raise OSError("rename refused")

    monkeypatch.setattr(ap.os, "replace", refuse)
    with pytest.raises(OSError, match="rename refused"):
        ap.run(series, root2, version=None, check_only=False)
    assert (root2 / "vllm" / "mod.py").read_text() == ORIGINAL
    assert sorted(p.name for p in (root2 / "vllm").iterdir()) == ["_version.py", "mod.py"]


def test_functions_are_found_by_dotted_name() -> None:
    source = (
        "class A:\n    class B:\n        async def m(self):\n            pass\n\n"
        "    def f(self):\n        return 1\n\n\ndef g():\n    return 2\n"
    )
    assert ap.find_function(source, "A.B.m") == (3, 4)
    assert ap.find_function(source, "A.f") == (6, 7)
    assert ap.find_function(source, "g") == (10, 11)
    assert ap.find_function(source, "A.g") is None
    assert ap.find_function(source, "B.m") is None
    assert ap.find_function(source, "A.f.x") is None


def test_a_patch_for_a_file_this_vllm_lacks_is_a_conflict(tmp_path: Path) -> None:
    patch = "--- a/vllm/none.py\n+++ b/vllm/none.py\n@@ -1 +1 @@\n-a\n+b\n"
    report, _ = _apply(tmp_path, {"vllm/mod.py": ORIGINAL}, patch)
    row = report["patches"][0]
    assert (row["result"], row["detail"]) == ("conflict", "vllm/none.py: file does not exist in this vLLM")
    assert row["files"] == [
        {"path": "vllm/none.py", "state": "conflict", "detail": "file does not exist in this vLLM"}
    ]


def test_among_identical_lines_the_stated_one_is_changed(tmp_path: Path) -> None:
    for header, expected in (("@@ -2 +2 @@", "k\nK\nk\nk\n"), ("@@ -4 +4 @@", "k\nk\nk\nK\n")):
        patch = f"--- a/vllm/mod.py\n+++ b/vllm/mod.py\n{header}\n-k\n+K\n"
        report, root = _apply(tmp_path / header[4], {"vllm/mod.py": "k\nk\nk\nk\n"}, patch)
        assert report["ok"] and (root / "vllm" / "mod.py").read_text() == expected


def test_a_lone_zero_context_insertion_follows_its_line(tmp_path: Path) -> None:
    patch = "--- a/vllm/mod.py\n+++ b/vllm/mod.py\n@@ -3,0 +4 @@\n+# after 3\n"
    report, root = _apply(tmp_path, {"vllm/mod.py": ORIGINAL}, patch)
    assert report["ok"]
    assert (root / "vllm" / "mod.py").read_text().splitlines()[2:5] == ["# line 3", "# after 3", "# line 4"]


def test_later_hunks_follow_the_lines_earlier_hunks_moved(tmp_path: Path) -> None:
    # Every line alike: only the running offset tells which "k" the second hunk means.
    patch = "--- a/vllm/mod.py\n+++ b/vllm/mod.py\n@@ -2 +2,2 @@\n-k\n+K\n+K\n@@ -5 +6 @@\n-k\n+J\n"
    report, root = _apply(tmp_path, {"vllm/mod.py": "k\n" * 8}, patch)
    assert report["ok"]
    assert (root / "vllm" / "mod.py").read_text() == "k\nK\nK\nk\nk\nJ\nk\nk\nk\n"
    missing = patch.replace("-k\n+J\n", "-q\n+J\n")
    report, _ = _apply(tmp_path / "2", {"vllm/mod.py": "k\n" * 8}, missing)
    assert report["patches"][0]["detail"] == (
        "vllm/mod.py: hunk 2 @@ -5 +6 @@ does not match (expected near line 6)"
    )


def test_one_line_blocks_without_newline(tmp_path: Path) -> None:
    patch = (
        "--- a/vllm/mod.py\n+++ b/vllm/mod.py\n@@ -2 +2 @@\n-cc\n\\ No newline at end of file\n"
        "+CC\n\\ No newline at end of file\n"
    )
    report, root = _apply(tmp_path, {"vllm/mod.py": "aa\ncc"}, patch)
    assert report["ok"], json.dumps(report)
    assert (root / "vllm" / "mod.py").read_text() == "aa\nCC"


def test_the_new_text_is_written_to_a_hidden_sibling_then_renamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    renames: list[tuple[Path, Path]] = []
    replace = os.replace

    def record(src: str, dst: str) -> None:
        renames.append((Path(src), Path(dst)))
        replace(src, dst)

    monkeypatch.setattr(ap.os, "replace", record)
    patch = "--- a/vllm/mod.py\n+++ b/vllm/mod.py\n@@ -1 +1 @@\n-# line 1\n+# one\n"
    report, root = _apply(tmp_path, {"vllm/mod.py": ORIGINAL}, patch)
    assert report["ok"]
    ((src, dst),) = renames
    assert dst == root / "vllm" / "mod.py" and src.parent == dst.parent
    assert src.name.startswith(".mod.py.") and src.name.endswith(".tmp")


def test_upstream_evidence_may_span_lines(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"vllm/up.py": "def f():\n    x = 1\n    return x\n"})
    entries = (
        "  - {id: u, status: upstream, vllm: ['0.33.0'], upstream: pr, file_upstream: vllm/up.py,"
        ' function: f, evidence: ["x = 1\\n    return x"]}\n'
    )
    report = ap.run(_series(tmp_path, {}, entries), root, version=None, check_only=True)
    assert report["patches"][0]["result"] == "upstream", json.dumps(report)


def test_a_series_of_applied_upstream_and_unlisted_entries_is_ok(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"vllm/mod.py": ORIGINAL, "vllm/up.py": "def f():\n    return 'fix'\n"})
    entries = (
        "  - {id: a, file: a.patch, status: carried, vllm: ['0.33.0'], upstream: none}\n"
        "  - {id: o, file: a.patch, status: carried, vllm: ['0.32.0'], upstream: none}\n"
        "  - {id: u, status: upstream, vllm: ['0.33.0'], upstream: pr, file_upstream: vllm/up.py,"
        " function: f, evidence: [fix]}\n"
    )
    patch = "--- a/vllm/mod.py\n+++ b/vllm/mod.py\n@@ -1 +1 @@\n-# line 1\n+# one\n"
    report = ap.run(_series(tmp_path, {"a.patch": patch}, entries), root, version=None, check_only=False)
    assert [p["result"] for p in report["patches"]] == ["applies", "not-for-version", "upstream"]
    assert report["ok"] is True


def test_a_failed_series_byte_compiles_nothing_and_names_the_syntax_error(tmp_path: Path) -> None:
    broken = "--- a/vllm/mod.py\n+++ b/vllm/mod.py\n@@ -1 +1 @@\n-# line 1\n+def (:\n"
    conflict = "--- a/vllm/mod.py\n+++ b/vllm/mod.py\n@@ -5 +5 @@\n-nothing like it\n+x\n"
    root = _tree(tmp_path, {"vllm/mod.py": ORIGINAL})
    report = ap.run(
        _series(tmp_path, {"1.patch": broken, "2.patch": conflict}), root, version=None, check_only=False
    )
    assert report["ok"] is False and "compile_error" not in report
    root2 = _tree(tmp_path / "2", {"vllm/mod.py": ORIGINAL})
    report = ap.run(_series(tmp_path / "2", {"1.patch": broken}), root2, version=None, check_only=False)
    assert report["compile_error"] == "vllm/mod.py: SyntaxError: invalid syntax"


def test_a_conflict_does_not_hide_the_entries_after_it(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"vllm/a.py": "A\n", "vllm/b.py": "B\n", "vllm/c.py": "c\n"})
    patches = {
        "1.patch": "--- a/vllm/c.py\n+++ b/vllm/c.py\n@@ -1 +1 @@\n-nothing like it\n+x\n",
        "2.patch": "--- a/vllm/a.py\n+++ b/vllm/a.py\n@@ -1 +1 @@\n-a\n+A\n"
        "--- a/vllm/b.py\n+++ b/vllm/b.py\n@@ -1 +1 @@\n-b\n+B\n"
        "--- a/vllm/c.py\n+++ b/vllm/c.py\n@@ -1 +1 @@\n-c\n+C\n",
        "3.patch": "--- a/vllm/c.py\n+++ b/vllm/c.py\n@@ -1 +1 @@\n-c\n+C\n",
    }
    report = ap.run(_series(tmp_path, patches), root, version=None, check_only=True)
    rows = [(p["id"], p["result"], p["detail"]) for p in report["patches"]]
    assert rows == [
        ("p0", "conflict", "vllm/c.py: hunk 1 @@ -1 +1 @@ does not match (expected near line 1)"),
        ("p1", "conflict", "partly present: vllm/a.py, vllm/b.py"),
        ("p2", "applies", "vllm/c.py (1 hunks)"),
    ]
