#!/usr/bin/env python3
"""Apply the gh200 vLLM patch series to a vLLM tree, strictly, or say exactly what does not apply.

One script for both places that apply the series:
  - the image build (containers/vllm/Containerfile), against site-packages of the vLLM image;
  - `gh200 patches check --vllm VERSION`, against the sdist's source in a scratch tree.

Standard library only (the image's Python and the stand-in's Debian python3 both run it), apart
from PyYAML for the series file: vLLM itself depends on PyYAML, and the stand-in installs it.

Hunks must match exactly (an offset is allowed, fuzz is not): a patch written for other code must
fail loudly rather than land in the wrong place. "Exactly" is byte for byte: no whitespace or
line-ending normalisation (files are read and written without newline translation, and split at
"\n" only), so indentation, trailing blanks, tabs and CRLF all count. A patch whose result is
already present is reported as already applied; recorded-upstream entries are verified by their
evidence strings.

Exit codes: 0 all good, 1 a patch conflicts or an upstream fix is missing, 2 bad input.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import py_compile
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
VERSION = re.compile(r"""^__version__\s*=\s*(?:version\s*=\s*)?['"]([^'"]+)['"]""", re.M)


class SeriesError(Exception):
    """The series file or a patch file is malformed (exit 2)."""


@dataclass
class Hunk:
    old_start: int
    header: str
    new_start: int = 0
    old: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)


@dataclass
class FilePatch:
    path: str
    hunks: list[Hunk] = field(default_factory=list)


def _strip_prefix(name: str) -> str:
    name = name.split("\t", 1)[0].strip()
    if name.startswith(("a/", "b/")):
        return name[2:]
    return name


def _no_newline(hunk: Hunk, tag: str) -> None:
    """Handle a "\\ No newline at end of file" marker: the line just read has no newline."""
    blocks = {"-": [hunk.old], "+": [hunk.new]}.get(tag, [hunk.old, hunk.new])
    for block in blocks:
        if block and block[-1].endswith("\n"):
            block[-1] = block[-1][:-1]


def split_lines(text: str) -> list[str]:
    """Lines split at "\n" only, each keeping its ending (str.splitlines would also split at
    \r, \f, \x1c... and so match lines that differ)."""
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def read_exact(path: Path) -> str:
    """A file's text as stored: no newline translation."""
    return path.read_bytes().decode("utf-8")


def parse_patch(text: str, source: str) -> list[FilePatch]:
    """A unified diff (-p1) as files and hunks; lines keep their newlines."""
    files: list[FilePatch] = []
    lines = split_lines(text)
    i = 0
    current: FilePatch | None = None
    while i < len(lines):
        line = lines[i]
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            target = _strip_prefix(lines[i + 1][4:])
            if target == "/dev/null" or ".." in Path(target).parts or target.startswith("/"):
                raise SeriesError(f"{source}: unsupported target {target!r} (only edits of existing files)")
            current = FilePatch(target)
            files.append(current)
            i += 2
            continue
        match = HUNK.match(line)
        if match:
            if current is None:
                raise SeriesError(f"{source}: hunk before any file header")
            old_len = int(match.group(2) or "1")
            new_len = int(match.group(4) or "1")
            hunk = Hunk(int(match.group(1)), line.strip(), int(match.group(3)))
            i += 1
            seen_old = seen_new = 0
            last = " "
            while i < len(lines) and (seen_old < old_len or seen_new < new_len):
                body = lines[i]
                if body.startswith("\\"):
                    _no_newline(hunk, last)
                    i += 1
                    continue
                tag, content = body[:1], body[1:]
                if body in ("\n", "\r\n"):
                    tag, content = " ", body  # an editor ate the context line's leading space
                if tag == " ":
                    hunk.old.append(content)
                    hunk.new.append(content)
                    seen_old += 1
                    seen_new += 1
                elif tag == "-":
                    hunk.old.append(content)
                    seen_old += 1
                elif tag == "+":
                    hunk.new.append(content)
                    seen_new += 1
                else:
                    raise SeriesError(f"{source}: malformed hunk line {body!r} in {hunk.header}")
                last = tag
                i += 1
            if seen_old != old_len or seen_new != new_len:
                raise SeriesError(f"{source}: hunk {hunk.header} is truncated")
            if i < len(lines) and lines[i].startswith("\\"):
                _no_newline(hunk, last)
                i += 1
            current.hunks.append(hunk)
            continue
        i += 1
    if not files or not any(f.hunks for f in files):
        raise SeriesError(f"{source}: no hunks found")
    return files


def _find(lines: list[str], block: list[str], expected: int) -> int | None:
    """Index where `block` matches exactly, nearest to `expected`; None if nowhere."""
    if not block:
        return max(0, min(expected, len(lines)))
    last = len(lines) - len(block)
    for distance in range(0, max(expected, last - expected) + 1):
        for pos in (expected - distance, expected + distance):
            if 0 <= pos <= last and lines[pos : pos + len(block)] == block:
                return pos
    return None


@dataclass
class FileResult:
    path: str
    state: str  # applied | already | conflict
    detail: str = ""
    new_text: str | None = None


def _apply_hunks(lines: list[str], hunks: list[Hunk], *, reverse: bool) -> tuple[list[str], int | None, int]:
    """(result, None, offset) when every hunk matches exactly, in order; else (lines, number of the
    first hunk that does not, the offset where it was looked for). reverse: undo the hunks (match
    their result, put back their original)."""
    offset = 0
    out = list(lines)
    for number, hunk in enumerate(hunks, 1):
        find, put = (hunk.new, hunk.old) if reverse else (hunk.old, hunk.new)
        start = (hunk.new_start if reverse else hunk.old_start) - 1
        if not find:
            # Nothing to match (a diff -U0 insertion): the number names the line it follows, as GNU
            # patch reads it.
            start += 1
        pos = _find(out, find, start + offset)
        if pos is None:
            return lines, number, offset
        out[pos : pos + len(find)] = put
        offset = pos - start + len(put) - len(find)
    return out, None, offset


def apply_file(root: Path, fp: FilePatch) -> FileResult:
    """Apply one file's hunks in memory: all of them, or report the first that fails.

    Already applied means the reverse patch applies exactly, every hunk in order: a file where
    only some hunks' results are present is a conflict, not "already applied"."""
    path = root / fp.path
    if not path.is_file():
        return FileResult(fp.path, "conflict", "file does not exist in this vLLM")
    lines = split_lines(read_exact(path))
    out, failed, offset = _apply_hunks(lines, fp.hunks, reverse=False)
    if failed is None:
        return FileResult(fp.path, "applied", f"{len(fp.hunks)} hunks", "".join(out))
    if _apply_hunks(lines, fp.hunks, reverse=True)[1] is None:
        return FileResult(fp.path, "already", "the patched code is already present")
    hunk = fp.hunks[failed - 1]
    return FileResult(
        fp.path,
        "conflict",
        f"hunk {failed} {hunk.header} does not match (expected near line {hunk.old_start + offset})",
    )


def _write_atomic(path: Path, text: str) -> None:
    # A sibling temp file renamed over the original: a hard-linked pristine copy is never edited.
    mode = path.stat().st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def find_function(source: str, dotted: str) -> tuple[int, int] | None:
    """(first, last) line of `func` or `Class.method` in a module's source, or None."""
    tree = ast.parse(source)
    parts = dotted.split(".")
    scope: list[ast.stmt] = list(tree.body)
    node: ast.AST | None = None
    for part in parts:
        node = next(
            (
                n
                for n in scope
                if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and n.name == part
            ),
            None,
        )
        if node is None:
            return None
        scope = list(getattr(node, "body", []))
    assert node is not None
    return node.lineno, getattr(node, "end_lineno", node.lineno) or node.lineno


def check_upstream(root: Path, entry: dict[str, Any]) -> tuple[str, str]:
    """('upstream', where) if every evidence string is inside the cited function, else ('missing', why)."""
    rel = str(entry.get("file_upstream") or "")
    path = root / rel
    if not rel or not path.is_file():
        return "missing", f"{rel or '(no file_upstream)'} does not exist in this vLLM"
    source = path.read_text(encoding="utf-8")
    function = str(entry.get("function") or "")
    span = find_function(source, function) if function else (1, source.count("\n") + 1)
    if span is None:
        return "missing", f"{rel} has no {function}"
    body = "".join(source.splitlines(keepends=True)[span[0] - 1 : span[1]])
    absent = [e for e in entry.get("evidence") or [] if e not in body]
    if absent:
        return "missing", f"{rel}:{function} lacks {absent[0]!r}"
    return "upstream", f"{rel}:{function} (lines {span[0]}-{span[1]})"


def vllm_version(root: Path) -> str | None:
    """The version of the vLLM under root (vllm/_version.py, written by the build), local part dropped."""
    version_file = root / "vllm" / "_version.py"
    if not version_file.is_file():
        return None
    match = VERSION.search(version_file.read_text(encoding="utf-8"))
    return match.group(1).split("+", 1)[0] if match else None


def load_series(path: Path) -> dict[str, Any]:
    try:
        import yaml
    except ImportError as err:  # pragma: no cover - both targets ship PyYAML
        raise SeriesError("PyYAML is needed to read the series file") from err
    if not path.is_file():
        raise SeriesError(f"series file {path} does not exist")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("patches"), list):
        raise SeriesError(f"{path}: expected a mapping with a `patches` list")
    for entry in data["patches"]:
        if (
            not isinstance(entry, dict)
            or not entry.get("id")
            or entry.get("status") not in ("carried", "upstream")
        ):
            raise SeriesError(f"{path}: every patch needs an id and status carried|upstream: {entry!r}")
        if entry["status"] == "carried" and not entry.get("file"):
            raise SeriesError(f"{path}: carried patch {entry['id']} names no file")
    return data


def run(
    series_path: Path, root: Path, *, version: str | None, check_only: bool, every: bool = False
) -> dict[str, Any]:
    """Apply (or dry-run) the series for `version` under root; a report of every entry.

    every=False (image builds): entries not listed for `version` are skipped, and a series that
    lists no carried patch for it fails, so a base with another vLLM cannot slip through unpatched.
    every=True (`gh200 patches check`): every entry is tried, listed or not, to see where it stands.
    """
    series = load_series(series_path)
    version = version or vllm_version(root)
    if version is None:
        raise SeriesError(
            f"cannot tell the vLLM version under {root} (no vllm/_version.py); pass --vllm-version"
        )
    report: dict[str, Any] = {"vllm": version, "root": str(root), "check_only": check_only, "patches": []}
    pending: list[tuple[Path, str]] = []
    touched: list[str] = []
    for entry in series["patches"]:
        row: dict[str, Any] = {
            "id": entry["id"],
            "file": entry.get("file"),
            "status": entry["status"],
            "upstream": entry.get("upstream"),
            "vllm": entry.get("vllm") or [],
        }
        report["patches"].append(row)
        row["listed"] = version in row["vllm"]
        if not row["listed"] and not every:
            row["result"], row["detail"] = (
                "not-for-version",
                f"listed for {', '.join(row['vllm']) or 'no version'}",
            )
            continue
        if entry["status"] == "upstream":
            row["result"], row["detail"] = check_upstream(root, entry)
            continue
        patch_path = series_path.parent / entry["file"]
        if not patch_path.is_file():
            raise SeriesError(f"patch file {patch_path} is missing")
        files = parse_patch(read_exact(patch_path), entry["file"])
        results = [apply_file(root, fp) for fp in files]
        row["files"] = [{"path": r.path, "state": r.state, "detail": r.detail} for r in results]
        bad = [r for r in results if r.state == "conflict"]
        if bad:
            row["result"] = "conflict"
            row["detail"] = f"{bad[0].path}: {bad[0].detail}"
            continue
        if all(r.state == "already" for r in results):
            row["result"], row["detail"] = "already-applied", "the patched code is already present"
            continue
        if any(r.state == "already" for r in results):
            row["result"] = "conflict"
            row["detail"] = "partly present: " + ", ".join(r.path for r in results if r.state == "already")
            continue
        row["result"], row["detail"] = "applies", ", ".join(f"{r.path} ({r.detail})" for r in results)
        for r in results:
            assert r.new_text is not None
            if check_only:
                continue
            # Later patches may edit the same file: write now, in series order.
            _write_atomic(root / r.path, r.new_text)
            pending.append((root / r.path, r.path))
            touched.append(r.path)
    report["touched"] = sorted(set(touched))
    carried_listed = [
        e for e in series["patches"] if e["status"] == "carried" and version in (e.get("vllm") or [])
    ]
    if not every and not carried_listed:
        report["series_error"] = (
            f"the series lists no patch for vLLM {version}: check it with "
            f"`gh200 patches check --vllm {version}` and list the version in series.yaml"
        )
    report["ok"] = all(
        p.get("result") in ("applies", "already-applied", "upstream", "not-for-version")
        for p in report["patches"]
    )
    if report.get("series_error"):
        report["ok"] = False
    if not check_only and report["ok"]:
        for path, rel in pending:
            try:
                py_compile.compile(str(path), cfile=importlib.util.cache_from_source(str(path)), doraise=True)
            except py_compile.PyCompileError as err:
                report["ok"] = False
                report["compile_error"] = f"{rel}: {err.msg.strip().splitlines()[-1]}"
    return report


def _print_human(report: dict[str, Any]) -> None:
    verb = "check" if report["check_only"] else "apply"
    print(f"gh200 patches: {verb} series for vLLM {report['vllm']} under {report['root']}")
    for row in report["patches"]:
        print(f"  {row['id']:<32} {row['result']:<16} {row.get('detail', '')}")
        if row.get("result") == "conflict":
            print(
                f"error: patch {row['file']} ({row['id']}) does not apply: {row['detail']}",
                file=sys.stderr,
            )
        if row.get("result") == "missing":
            print(f"error: upstream fix {row['id']} is missing: {row['detail']}", file=sys.stderr)
    if report.get("series_error"):
        print(f"error: {report['series_error']}", file=sys.stderr)
    if report.get("compile_error"):
        print(f"error: byte-compiling a patched file failed: {report['compile_error']}", file=sys.stderr)
    for rel in report.get("touched", []):
        print(f"  patched and byte-compiled: {rel}")


def default_root() -> Path:
    """The directory that holds the importable `vllm` package (found without importing it)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        raise SeriesError("no importable vllm package here; pass --root")
    return Path(next(iter(spec.submodule_search_locations))).parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--series", type=Path, default=Path(__file__).resolve().parent / "patches" / "series.yaml"
    )
    parser.add_argument(
        "--root", type=Path, help="directory holding vllm/ (default: where python finds vllm)"
    )
    parser.add_argument("--vllm-version", help="override the version read from vllm/_version.py")
    parser.add_argument("--check", action="store_true", help="dry run: report, change nothing")
    parser.add_argument(
        "--every", action="store_true", help="try every entry, listed for this version or not"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    args = parser.parse_args(argv)
    try:
        root = (args.root or default_root()).resolve()
        report = run(args.series, root, version=args.vllm_version, check_only=args.check, every=args.every)
    except SeriesError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        _print_human(report)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
