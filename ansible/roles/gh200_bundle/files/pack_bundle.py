#!/usr/bin/env python3
"""Pack the gh200-stack checkout into a reproducible tarball for the bundle role (controller side).

Same files in, same bytes out: entries sorted, owner root, mtime 0, gzip without a timestamp.
The archive is named by its content hash, so the role's copy and unarchive steps change nothing
when the checkout has not changed. Prints one JSON object: path, name, sha256, files, changed.
Standard library only: it runs under whatever Python drives ansible-playbook.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

# What a host needs to run `gh200` and its shipped verification suite.
INCLUDE = (
    "pyproject.toml",
    "uv.lock",
    "README.md",
    "Makefile",
    "tools/",
    "profiles/",
    "containers/",
    "ansible/",
    "scripts/",
    "tests/host/",
)
SKIP_PARTS = {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".venv", ".git"}


def wanted(rel: str) -> bool:
    if any(part in SKIP_PARTS for part in rel.split("/")) or rel.endswith(".pyc"):
        return False
    return any(rel == item or (item.endswith("/") and rel.startswith(item)) for item in INCLUDE)


def list_files(root: Path) -> list[str]:
    """Tracked plus untracked-but-not-ignored files under git; a plain walk otherwise."""
    if (root / ".git").exists():
        try:
            out = subprocess.run(
                ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                check=True,
                capture_output=True,
            ).stdout
            names = [n for n in out.decode().split("\0") if n]
            return sorted(n for n in set(names) if wanted(n) and (root / n).is_file())
        except (OSError, subprocess.CalledProcessError):
            pass
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_PARTS]
        for name in filenames:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if wanted(rel):
                found.append(rel)
    return sorted(found)


def build(root: Path, files: list[str]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in files:
            path = root / rel
            data = path.read_bytes()
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            tar.addfile(info, io.BytesIO(data))
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(raw.getvalue())
    return packed.getvalue()


def default_out_dir() -> Path:
    if os.environ.get("GH200_CACHE"):
        base = Path(os.environ["GH200_CACHE"])
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "gh200"
    return base / "bundle"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, type=Path, help="the gh200-stack checkout")
    parser.add_argument("--out-dir", default="", help="where archives go (default: the gh200 cache)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if not (root / "pyproject.toml").is_file() or not (root / "tools" / "gh200").is_dir():
        print(f"error: {root} is not a gh200-stack checkout (no pyproject.toml or tools/gh200)", file=sys.stderr)
        return 2
    files = list_files(root)
    blob = build(root, files)
    digest = hashlib.sha256(blob).hexdigest()
    name = f"gh200-stack-{digest[:16]}"
    out_dir = Path(args.out_dir) if args.out_dir else default_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}.tar.gz"
    changed = not (out.is_file() and hashlib.sha256(out.read_bytes()).hexdigest() == digest)
    if changed:
        tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
        tmp.write_bytes(blob)
        os.replace(tmp, out)
    print(json.dumps({"path": str(out), "name": name, "sha256": digest, "files": len(files), "changed": changed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
