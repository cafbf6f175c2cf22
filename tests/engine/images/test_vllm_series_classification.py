"""The series check's classification (applies | absorbed | conflicts) on real vLLM source: the cached
0.33.0 sdist, and trees derived from it here the way an upstream release would change it.

No engine is needed (the real sdist is: downloaded once, sha256 checked). Each test names the wrong
classifier it rules out. Derived trees are hard-linked copies of the pristine cache; every edit
replaces a file (unlink, then write), so the cache itself is never changed.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from gh200.images.patches import check_series, check_tree, series_path
from gh200.paths import containers_dir

pytestmark = pytest.mark.slow

MTP = "vllm/models/deepseek_v32/nvidia/mtp.py"
SPEC = "vllm/config/speculative.py"
P0001 = "0001-glm52-mtp-quantization.patch"


def _applier() -> ModuleType:
    path = containers_dir() / "vllm" / "apply_patches.py"
    spec = importlib.util.spec_from_file_location("gh200_apply_patches_cls", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ap = _applier()


@pytest.fixture
def tree(tmp_path: Path, vllm_pristine: Path) -> Path:
    root = tmp_path / "tree"
    shutil.copytree(vllm_pristine / "vllm", root / "vllm", copy_function=os.link)
    return root


def _rewrite(root: Path, rel: str, change: Callable[[str], str]) -> None:
    path = root / rel
    text = path.read_bytes().decode()
    new = change(text)
    assert new != text, f"the edit of {rel} changed nothing"
    path.unlink()  # a hard link into the pristine cache: replace, never edit in place
    path.write_bytes(new.encode())


def _mtp_hunks() -> list[object]:
    (fp,) = ap.parse_patch((series_path().parent / P0001).read_text(), P0001)
    assert fp.path == MTP and len(fp.hunks) == 9
    return list(fp.hunks)


def _apply_hunks(root: Path, hunks: list[object]) -> None:
    fp = ap.FilePatch(MTP, hunks)
    result = ap.apply_file(root, fp)
    assert result.state == "applied", result.detail
    _rewrite(root, MTP, lambda _: result.new_text)


def _statuses(report: dict[str, object]) -> dict[str, tuple[str, str]]:
    return {row["patch"]: (row["status"], row["detail"]) for row in report["classification"]}  # type: ignore[attr-defined]


def _edit_hunk_line(text: str, hunk: object, index: int, edit: Callable[[str], str]) -> str:
    """Change line `index` of the hunk's original block where that block sits in the file."""
    lines = ap.split_lines(text)
    old = hunk.old  # type: ignore[attr-defined]
    pos = ap._find(lines, old, hunk.old_start - 1)  # type: ignore[attr-defined]
    assert pos is not None
    lines[pos + index] = edit(lines[pos + index])
    return "".join(lines)


def test_every_patch_applies_to_the_real_0_33_0_sdist() -> None:
    report = check_series("0.33.0", runtime=False)
    assert {k: v[0] for k, v in _statuses(report).items()} == {
        "glm52-mtp-quant": "applies",
        "dsv4-draft-hf-config-path": "applies",
    }
    assert report["sdist_pinned"] is True and report["ok"] is True


def test_a_patch_upstream_absorbed_is_absorbed(tree: Path) -> None:
    # Upstream took 0001 verbatim: kills a classifier that calls every failed forward apply a conflict.
    _apply_hunks(tree, _mtp_hunks())
    got = _statuses(check_tree(tree, "0.34.0"))
    assert got["glm52-mtp-quant"][0] == "absorbed"
    assert got["dsv4-draft-hf-config-path"][0] == "applies"


def test_a_conflicting_upstream_edit_inside_a_hunk_is_named(tree: Path) -> None:
    hunk = _mtp_hunks()[6]  # @@ -429,7 ...: upstream rewrote a line this hunk must match
    _rewrite(
        tree, MTP, lambda t: _edit_hunk_line(t, hunk, 3, lambda line: line.rstrip("\n") + "  # upstream\n")
    )
    status, detail = _statuses(check_tree(tree, "0.34.0"))["glm52-mtp-quant"]
    assert status == "conflicts"
    assert detail.startswith(f"{MTP}: hunk 7 @@ -429,7 +520,13 @@ does not match")


def test_only_some_hunks_upstream_is_a_conflict_not_absorbed(tree: Path) -> None:
    # Kills "absorbed when some (or any) hunk's result is present": the first four of nine hunks
    # are in, the rest are not, so neither the forward nor the reverse patch applies exactly.
    _apply_hunks(tree, _mtp_hunks()[:4])
    status, detail = _statuses(check_tree(tree, "0.34.0"))["glm52-mtp-quant"]
    assert status == "conflicts"
    assert detail.startswith(f"{MTP}: hunk 1 ")


def test_all_hunks_but_one_upstream_is_a_conflict(tree: Path) -> None:
    # The same, harder: eight of nine hunks absorbed; only the last one's result is missing.
    _apply_hunks(tree, _mtp_hunks()[:8])
    assert _statuses(check_tree(tree, "0.34.0"))["glm52-mtp-quant"][0] == "conflicts"


@pytest.mark.parametrize(
    ("hunk_no", "index", "edit"),
    [
        # The first context line differs: GNU patch's default fuzz (2) would still apply it.
        (3, 0, lambda line: line.replace("\n", "  # moved\n") if line.strip() else "# moved\n"),
        # A trailing blank on a context line: a whitespace-insensitive matcher would apply it.
        (5, 0, lambda line: line.replace("\n", " \n")),
    ],
    ids=["fuzzy-context", "whitespace-only"],
)
def test_a_fuzzy_match_is_a_conflict_not_applies(
    tree: Path, hunk_no: int, index: int, edit: Callable[[str], str]
) -> None:
    hunk = _mtp_hunks()[hunk_no - 1]
    _rewrite(tree, MTP, lambda t: _edit_hunk_line(t, hunk, index, edit))
    status, detail = _statuses(check_tree(tree, "0.34.0"))["glm52-mtp-quant"]
    assert status == "conflicts"
    assert f"hunk {hunk_no} " in detail


def _followup_series(tmp_path: Path, pristine: Path) -> Path:
    """The real series plus a third patch whose context is code that 0001 adds."""
    directory = tmp_path / "patches"
    shutil.copytree(series_path().parent, directory)
    patched = tmp_path / "patched"
    shutil.copytree(pristine / "vllm", patched / "vllm", copy_function=os.link)
    _apply_hunks(patched, _mtp_hunks())
    before = (patched / MTP).read_text().splitlines(keepends=True)
    anchor = next(i for i, line in enumerate(before) if line.startswith("def skip_mixed_quant_name("))
    after = [
        *before[: anchor + 1],
        "    # follow-up: a line inside a function 0001 adds\n",
        *before[anchor + 1 :],
    ]
    diff = "".join(difflib.unified_diff(before, after, f"a/{MTP}", f"b/{MTP}"))
    (directory / "0003-followup.patch").write_text(diff)
    with (directory / "series.yaml").open("a") as handle:
        handle.write(
            "\n  - id: followup\n    file: 0003-followup.patch\n    purpose: test\n"
            '    vllm: ["0.33.0"]\n    status: carried\n    upstream: test\n'
        )
    return directory / "series.yaml"


def test_later_patches_are_checked_on_the_earlier_ones_applied(
    tmp_path: Path, tree: Path, vllm_pristine: Path
) -> None:
    # Kills a check that tries each patch on the pristine tree: the follow-up only matches after 0001.
    series = _followup_series(tmp_path, vllm_pristine)
    got = _statuses(check_tree(tree, "0.33.0", series=series))
    assert got["glm52-mtp-quant"][0] == "applies"
    assert got["followup"][0] == "applies"


def test_a_patch_after_a_conflicting_one_sees_the_tree_without_it(
    tmp_path: Path, tree: Path, vllm_pristine: Path
) -> None:
    # Kills a check that pretends a conflicting patch was applied (or applies "what it can" of it).
    series = _followup_series(tmp_path, vllm_pristine)
    hunk = _mtp_hunks()[6]
    _rewrite(
        tree, MTP, lambda t: _edit_hunk_line(t, hunk, 3, lambda line: line.rstrip("\n") + "  # upstream\n")
    )
    got = _statuses(check_tree(tree, "0.33.0", series=series))
    assert got["glm52-mtp-quant"][0] == "conflicts"
    assert got["followup"][0] == "conflicts"
