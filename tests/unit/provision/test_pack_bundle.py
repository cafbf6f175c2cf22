"""roles/gh200_bundle/files/pack_bundle.py: same checkout, same bytes; only the bundle's files."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType

from gh200.paths import ansible_dir

SCRIPT = ansible_dir() / "roles" / "gh200_bundle" / "files" / "pack_bundle.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pack_bundle", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _checkout(root: Path) -> Path:
    (root / "tools" / "gh200").mkdir(parents=True)
    (root / "tools" / "gh200" / "__init__.py").write_text("x = 1\n")
    (root / "tools" / "gh200" / "__pycache__").mkdir()
    (root / "tools" / "gh200" / "__pycache__" / "a.pyc").write_bytes(b"\0")
    (root / "pyproject.toml").write_text("[project]\nname='x'\n")
    (root / "tests" / "host").mkdir(parents=True)
    (root / "tests" / "host" / "test_x.py").write_text("")
    (root / "tests" / "unit").mkdir()
    (root / "tests" / "unit" / "test_y.py").write_text("")
    (root / "scripts").mkdir()
    (root / "scripts" / "run.sh").write_text("#!/bin/sh\n")
    (root / "scripts" / "run.sh").chmod(0o755)
    (root / "notes.txt").write_text("not shipped")
    return root


def test_same_tree_same_archive_and_only_bundle_files(tmp_path: Path) -> None:
    root = _checkout(tmp_path / "src")
    out = tmp_path / "out"
    args = [sys.executable, str(SCRIPT), "--root", str(root), "--out-dir", str(out)]
    first = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)
    (root / "tools" / "gh200" / "__init__.py").touch()  # a new mtime alone changes nothing
    second = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)
    assert first["changed"] is True and second["changed"] is False
    assert first["sha256"] == second["sha256"] and first["name"] == f"gh200-stack-{first['sha256'][:16]}"
    with tarfile.open(first["path"]) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert sorted(members) == [
        "pyproject.toml",
        "scripts/run.sh",
        "tests/host/test_x.py",
        "tools/gh200/__init__.py",
    ]
    assert members["scripts/run.sh"].mode == 0o755 and members["pyproject.toml"].mode == 0o644
    assert {m.mtime for m in members.values()} == {0} and {m.uname for m in members.values()} == {"root"}


def test_a_content_change_gives_a_new_archive(tmp_path: Path) -> None:
    pack = _load()
    root = _checkout(tmp_path / "src")
    a = pack.build(root, pack.list_files(root))
    (root / "tools" / "gh200" / "__init__.py").write_text("x = 2\n")
    b = pack.build(root, pack.list_files(root))
    assert a != b
    with tarfile.open(fileobj=io.BytesIO(b)) as tar:
        member = tar.extractfile("tools/gh200/__init__.py")
        assert member is not None and member.read() == b"x = 2\n"


def test_not_a_checkout_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(tmp_path), "--out-dir", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "not a gh200-stack checkout" in done.stderr
