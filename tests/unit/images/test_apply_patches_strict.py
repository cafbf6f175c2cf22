"""apply_patches.py promises no fuzz: a hunk matches byte for byte or it is a conflict.

Each case differs from the patch's context only in whitespace or line endings, so a matcher that
strips, collapses or translates whitespace (or newlines) applies the patch and fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from applier import load_applier

ap = load_applier()

ORIGINAL = "def f():\n" + "".join(f"    value_{i} = {i}\n" for i in range(1, 13))
PATCH = """--- a/vllm/mod.py
+++ b/vllm/mod.py
@@ -5,3 +5,4 @@
     value_5 = 5
     value_6 = 6
+    added = True
     value_7 = 7
"""


def _setup(tmp_path: Path, data: bytes) -> tuple[Path, Path]:
    root = tmp_path / "root"
    (root / "vllm").mkdir(parents=True)
    (root / "vllm" / "mod.py").write_bytes(data)
    (root / "vllm" / "_version.py").write_text("__version__ = '0.33.0'\n")
    patches = tmp_path / "patches"
    patches.mkdir()
    (patches / "0001-x.patch").write_text(PATCH)
    (patches / "series.yaml").write_text(
        "patches:\n  - {id: x, file: 0001-x.patch, status: carried, vllm: ['0.33.0'], upstream: none}\n"
    )
    return root, patches / "series.yaml"


def test_the_exact_text_applies(tmp_path: Path) -> None:
    root, series = _setup(tmp_path, ORIGINAL.encode())
    assert ap.run(series, root, version=None, check_only=False)["ok"]
    assert "    value_6 = 6\n    added = True\n    value_7 = 7\n" in (root / "vllm" / "mod.py").read_text()


@pytest.mark.parametrize(
    "variant",
    [
        ORIGINAL.replace("    value_6 = 6\n", "        value_6 = 6\n"),  # indentation
        ORIGINAL.replace("    value_6 = 6\n", "\tvalue_6 = 6\n"),  # tab for spaces
        ORIGINAL.replace("    value_6 = 6\n", "    value_6 = 6  \n"),  # trailing blanks
        ORIGINAL.replace("    value_6 = 6\n", "    value_6  =  6\n"),  # inner blanks
        ORIGINAL.replace("    value_6 = 6\n", "    value_6 =\x0c6\n"),  # a form feed
        ORIGINAL.replace("\n", "\r\n"),  # CRLF line endings
    ],
    ids=["indent", "tab", "trailing", "inner", "formfeed", "crlf"],
)
def test_whitespace_only_differences_are_conflicts(tmp_path: Path, variant: str) -> None:
    data = variant.encode()
    root, series = _setup(tmp_path, data)
    report = ap.run(series, root, version=None, check_only=False)
    assert report["ok"] is False
    assert report["patches"][0]["result"] == "conflict"
    assert (root / "vllm" / "mod.py").read_bytes() == data  # untouched, byte for byte


def test_crlf_file_keeps_its_line_endings_where_the_patch_is_crlf_too(tmp_path: Path) -> None:
    data = ORIGINAL.replace("\n", "\r\n").encode()
    root, series = _setup(tmp_path, data)
    (series.parent / "0001-x.patch").write_bytes(PATCH.replace("\n", "\r\n").encode())
    assert ap.run(series, root, version=None, check_only=False)["ok"]
    out = (root / "vllm" / "mod.py").read_bytes()
    assert b"    value_6 = 6\r\n    added = True\r\n    value_7 = 7\r\n" in out
    assert b"\n" not in out.replace(b"\r\n", b"")
