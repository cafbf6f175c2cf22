#!/usr/bin/env python3
"""In-image smoke test for the gh200 vLLM patch series.

--mode import (the real image): import every module a carried patch names and check that the
  symbols it adds are there, so a patch that breaks an import fails the build.
--mode compile (a stand-in base without torch): byte-compile the same modules' files and check
  the symbols are defined at module level, without importing them.
--mode runtime (the built image on the workstation, GPU visible; `gh200 images build vllm` runs it
  there): mtp_check.py builds the GLM-5.2 MTP draft through vLLM's config path on a tiny graft
  mounted at --checkpoint and loads it with the GPU kernels (process_weights_after_loading
  included); each carried patch's verdict is printed, any failure exits 1.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import py_compile
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from apply_patches import SeriesError, default_root, load_series, vllm_version


def top_level_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def runtime(checkpoint: Path, hf_config_path: Path | None) -> int:
    """The same build-and-load check as tests/vllm, on the GPU, in this image."""
    import json
    import subprocess

    import mtp_check

    argv = [sys.executable, str(Path(__file__).resolve().parent / "mtp_check.py"), "--device", "cuda"]
    argv += ["--checkpoint", str(checkpoint), "--marker", mtp_check.MARKER]
    if hf_config_path is not None:
        argv += ["--hf-config-path", str(hf_config_path)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    try:
        report = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        print(f"error: mtp_check.py gave no report: {done.stderr.strip()[-2000:]}", file=sys.stderr)
        return 1
    failures = 0
    for patch_id, (ok, why) in mtp_check.verdicts(report).items():
        print(f"smoke runtime: {patch_id} {'passed' if ok else 'FAILED'}: {why}")
        failures += not ok
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=Path, required=True)
    parser.add_argument("--root", type=Path)
    parser.add_argument("--mode", choices=("import", "compile", "runtime"), default="import")
    parser.add_argument("--checkpoint", type=Path, help="runtime mode: a tiny grafted GLM-5.2 checkpoint")
    parser.add_argument("--hf-config-path", type=Path, help="runtime mode: its marked local config dir")
    args = parser.parse_args(argv)
    if args.mode == "runtime":
        if args.checkpoint is None or not (args.checkpoint / "config.json").is_file():
            print("error: --mode runtime needs --checkpoint DIR holding a config.json", file=sys.stderr)
            return 2
        return runtime(args.checkpoint, args.hf_config_path)
    try:
        root = (args.root or default_root()).resolve()
        series = load_series(args.series)
    except SeriesError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    version = vllm_version(root)
    failures = 0
    # vLLM's --numa-bind runs its workers under numactl and raises when it is missing.
    if shutil.which("numactl") is None:
        print(
            "error: numactl is not on PATH; --numa-bind needs it (install the numactl package)",
            file=sys.stderr,
        )
        failures += 1
    else:
        print(f"smoke: numactl at {shutil.which('numactl')}")
    for entry in series["patches"]:
        if entry["status"] != "carried" or version not in (entry.get("vllm") or []):
            continue
        symbols = entry.get("smoke_symbols") or []
        for module in entry.get("smoke_imports") or []:
            path = root / (module.replace(".", "/") + ".py")
            try:
                if args.mode == "import":
                    loaded = importlib.import_module(module)
                    present = set(dir(loaded))
                else:
                    py_compile.compile(str(path), doraise=True)
                    present = top_level_names(path)
            except Exception as err:  # any import failure is the finding
                print(
                    f"error: smoke {args.mode} of {module} ({entry['id']}) failed: {err!r}", file=sys.stderr
                )
                failures += 1
                continue
            missing = [s for s in symbols if s not in present]
            if missing:
                print(
                    f"error: {module} lacks {', '.join(missing)} after patch {entry['id']}", file=sys.stderr
                )
                failures += 1
                continue
            listed = ", ".join(symbols) or "no symbols listed"
            print(f"smoke {args.mode}: {module} ok ({entry['id']}: {listed})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
