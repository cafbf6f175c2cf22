"""`make mutation`: mutmut over the core decision modules, one module at a time, share killed per module.

A benchmark of how well the fast unit tests pin behaviour down, not part of `make test`. Dev-only, so it
lives here and not in the shipped package.

mutmut 3 names mutants after the file's path (minus a leading `src/`) and matches them against the
running function's `__module__`, so the package must sit at `src/gh200` for `gh200.x.y` to line up. Each
module therefore runs in a throw-away staging copy of the checkout under $GH200_CACHE/mutation/<name>:
`src/gh200` (the package), `tests/`, `profiles/`, `containers/`, `ansible/` and the pyproject with a
[tool.mutmut] section that mutates only that module and selects only its unit tests. The patch applier is
loaded by its tests by file path under the module name `gh200_apply_patches`, so it is staged as
`src/gh200_apply_patches.py` and the bundle's containers/vllm/apply_patches.py (GH200_HOME) points at the
mutated copy. Tests that run the `gh200` CLI in a subprocess import the mutated package too (PYTHONPATH), but
mutmut selects tests per function by the calls it records in-process, so a function that only a subprocess
reaches needs an in-process test to be credited.

    make mutation                          # every module
    make mutation MODULES=stats,render     # a subset (names below); JOBS=N mutants at once
    .venv/bin/python scripts/mutation.py --list
    .venv/bin/python scripts/mutation.py --modules graft --survivors   # after adding tests (or an
                          # interrupted run): re-test only what the last run did not kill, same source
    cd $GH200_CACHE/mutation/stats && <repo>/.venv/bin/python -m mutmut show NAME   # a survivor's diff

Survivors are listed in $GH200_CACHE/mutation/<name>/survivors.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOT_UNIT = "not engine and not ansible and not gpu and not gh200"


@dataclass(frozen=True)
class Module:
    source: str  # path in the checkout
    staged: str  # path in the staging copy, whose dotted form is the runtime module name
    tests: tuple[str, ...]  # the fast unit tests that exercise it (mutmut narrows per function)


def _pkg(rel: str, *tests: str) -> Module:
    return Module(f"tools/gh200/{rel}", f"src/gh200/{rel}", tests)


MODULES: dict[str, Module] = {
    "stats": _pkg("bench/stats.py", "tests/unit/bench"),
    "smoke": _pkg("bench/smoke.py", "tests/unit/bench"),
    "sweep": _pkg("bench/sweep.py", "tests/unit/bench"),
    "rule": _pkg("bench/rule.py", "tests/unit/bench"),
    # Each checkpoint module by its own test file (graft also by `models verify`, which reads its
    # record): header parsing runs under every graft and fetch test, and selecting those makes each
    # safetensors_io mutant cost the whole suite. Never test_checkpoints_imports.py: it reads the
    # modules' source, where a mutated module imports mutmut (undeclared), so mutmut's clean run fails.
    "graft": _pkg(
        "checkpoints/graft.py",
        "tests/unit/checkpoints/test_checkpoints_graft.py",
        "tests/unit/checkpoints/test_checkpoints_graft_edges.py",
        "tests/unit/checkpoints/test_checkpoints_inspect_verify.py",
        "tests/unit/checkpoints/test_checkpoints_graft_index.py",
        # Its steps, its fsync order and its header workers are graft code tested there.
        "tests/unit/checkpoints/test_checkpoints_graft_speed.py",
    ),
    "safetensors_io": _pkg(
        "checkpoints/safetensors_io.py",
        "tests/unit/checkpoints/test_checkpoints_safetensors.py",
        "tests/unit/checkpoints/test_checkpoints_header_rules.py",
        # The spliced hash, its child and the writeback are safetensors_io code tested there.
        "tests/unit/checkpoints/test_checkpoints_graft_speed.py",
    ),
    "fetch": _pkg("checkpoints/fetch.py", "tests/unit/checkpoints/test_checkpoints_fetch.py"),
    # The profiles suite also drives the CLI, locks and the hub stand-in; only these files test
    # rendering or validation, and the full suite makes each profiles mutant several times slower.
    "render": _pkg(
        "profiles/render.py",
        *(
            f"tests/unit/profiles/{t}.py"
            for t in (
                "test_profiles_render",
                "test_profiles_golden",
                "test_profiles_reference",
                "test_server_flags",
            )
        ),
        "tests/unit/profiles/test_profiles_locks.py::test_locked_container_spec_pulls_by_digest",
    ),
    "validate": _pkg(
        "profiles/validate.py",
        *(
            f"tests/unit/profiles/{t}.py"
            for t in (
                "test_profiles_validate",
                "test_profiles_broken",
                "test_profiles_reference",
                "test_profiles_property",
            )
        ),
    ),
    "apply_patches": Module(
        "containers/vllm/apply_patches.py",
        "src/gh200_apply_patches.py",
        tuple(f"tests/unit/images/test_apply_patches{t}.py" for t in ("", "_strict", "_edges")),
    ),
}


def _cache() -> Path:
    env = os.environ.get("GH200_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gh200"
    return base / "mutation"


def _toml_list(items: list[str] | tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def _stage(name: str, mod: Module) -> Path:
    stage = _cache() / name
    if stage.exists():
        shutil.rmtree(stage)  # a fresh run every time: no verdicts carried over from older code or tests
    stage.mkdir(parents=True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache", ".ruff_cache")
    shutil.copytree(REPO / "tools" / "gh200", stage / "src" / "gh200", ignore=skip)
    for tree in ("tests", "profiles", "containers", "ansible"):
        shutil.copytree(REPO / tree, stage / tree, ignore=skip)
    if not (stage / mod.staged).exists():
        shutil.copy2(REPO / mod.source, stage / mod.staged)
    # The bundle the code and tests read through GH200_HOME; its patch applier is the mutated copy.
    bundle = stage / "bundle"
    for tree in ("profiles", "containers", "ansible"):
        shutil.copytree(REPO / tree, bundle / tree, ignore=skip)
    applier = bundle / "containers" / "vllm" / "apply_patches.py"
    applier.unlink()
    applier.symlink_to(stage / "mutants" / "src" / "gh200_apply_patches.py")
    config = "\n".join(
        [
            "",
            "[tool.mutmut]",
            f"source_paths = {_toml_list(['src/'])}",
            f"only_mutate = {_toml_list([mod.staged])}",
            f"also_copy = {_toml_list(['profiles', 'containers', 'ansible'])}",
            f"pytest_add_cli_args = {_toml_list(['-p', 'no:cacheprovider', '-m', NOT_UNIT, '-q'])}",
            f"pytest_add_cli_args_test_selection = {_toml_list(mod.tests)}",
            "",
        ]
    )
    (stage / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text() + config)
    return stage


@dataclass
class Result:
    name: str
    killed: int
    total: int
    survived: int
    no_tests: int
    timeout: int
    suspicious: int
    seconds: float
    survivors: Path

    @property
    def share(self) -> float:
        # Timeouts count as killed (the mutant made the tests hang); "no tests" counts as survived.
        return (self.killed + self.timeout) / self.total if self.total else 0.0


def _restage_tests(name: str, mod: Module) -> tuple[Path, list[str]]:
    """The last run's staging copy with today's tests, and the mutants it did not kill or never reached.

    For tests added since (or a run that was interrupted): the module's source must be the one that run
    mutated, so that its verdicts on killed mutants stand, and the test selection must be the same.
    """
    stage = _cache() / name
    meta = stage / "mutants" / f"{mod.staged}.meta"
    if not meta.is_file():
        raise SystemExit(f"mutation: no earlier run of {name} to resume ({meta} missing); run it in full")
    if (stage / mod.staged).read_bytes() != (REPO / mod.source).read_bytes():
        raise SystemExit(f"mutation: {mod.source} changed since the last run of {name}; run it in full")
    shutil.rmtree(stage / "tests")
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache", ".ruff_cache")
    shutil.copytree(REPO / "tests", stage / "tests", ignore=skip)
    # mutmut's exit codes per mutant: None not run yet, 0 survived, 33 no tests (timeouts count as killed).
    verdicts: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
    return stage, sorted(n for n, code in verdicts.items() if code in (None, 0, 33))


def _run(name: str, mod: Module, jobs: int, survivors_only: bool = False) -> Result:
    names: list[str] = []
    if survivors_only:
        stage, names = _restage_tests(name, mod)
    else:
        stage = _stage(name, mod)
    env = {**os.environ, "GH200_HOME": str(stage / "bundle"), "GH200_CACHE": str(stage / "cache")}
    env.pop("GH200_REQUIRE_ENGINE", None)
    # Tests that drive the CLI run the venv's `gh200` in a subprocess, which would import the checkout's
    # unmutated package (an editable install's .pth entry): put the mutated copy first, so the child's
    # trampolines follow the MUTANT_UNDER_TEST it inherits and a killing CLI test counts.
    # The folder must exist before mutmut starts: an entry that is missing when Python first scans it is
    # cached as "nothing here", and mutmut's own sys.path entry for it (the same string) would then import
    # the unmutated package in-process too, so that no test is ever credited.
    (stage / "mutants" / "src").mkdir(parents=True, exist_ok=True)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(stage / "mutants" / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    mutmut = [sys.executable, "-m", "mutmut"]
    started = time.monotonic()
    log = stage / ("mutmut-survivors.log" if survivors_only else "mutmut.log")
    with log.open("w") as out:
        proc = subprocess.run(
            [*mutmut, "run", "--max-children", str(jobs), *names],
            check=False,
            cwd=stage,
            env=env,
            stdout=out,
            stderr=out,
        )
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"mutation: mutmut failed on {name} (exit {proc.returncode}); see {log}")
    subprocess.run([*mutmut, "export-cicd-stats"], cwd=stage, env=env, check=True, capture_output=True)
    stats = json.loads((stage / "mutants" / "mutmut-cicd-stats.json").read_text())
    listing = subprocess.run(
        [*mutmut, "results"], cwd=stage, env=env, check=True, capture_output=True, text=True
    )
    survivors = stage / "survivors.txt"
    survivors.write_text(listing.stdout)
    return Result(
        name=name,
        killed=stats["killed"],
        total=stats["total"] - stats["skipped"],
        survived=stats["survived"],
        no_tests=stats["no_tests"],
        timeout=stats["timeout"],
        suspicious=stats["suspicious"],
        seconds=seconds,
        survivors=survivors,
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modules", default="", help="comma-separated subset of: " + ", ".join(MODULES))
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument("--list", action="store_true", help="print the module names and exit")
    parser.add_argument(
        "--survivors",
        action="store_true",
        help="re-test only what the last run did not kill (or did not reach) with the current tests "
        "(tests added, source unchanged)",
    )
    args = parser.parse_args()
    if args.list:
        for name, mod in MODULES.items():
            print(f"{name:15} {mod.source}  <- {' '.join(mod.tests)}")
        return 0
    names = [n.strip() for n in args.modules.split(",") if n.strip()] or list(MODULES)
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        choices = ", ".join(MODULES)
        print(f"mutation: unknown module(s) {', '.join(unknown)}; pick from {choices}", file=sys.stderr)
        return 2
    if args.jobs < 1:
        print("mutation: --jobs must be at least 1", file=sys.stderr)
        return 2
    results = []
    for name in names:
        print(f"mutation: {name} ({MODULES[name].source}) ...", flush=True)
        result = _run(name, MODULES[name], args.jobs, args.survivors)
        results.append(result)
        print(
            f"  {result.killed + result.timeout}/{result.total} killed ({result.share:.1%}), "
            f"{result.survived} survived, {result.no_tests} without tests, {result.suspicious} suspicious, "
            f"{result.seconds:.0f}s; survivors: {result.survivors}",
            flush=True,
        )
    print(f"\n{'module':15} {'killed':>8} {'total':>6} {'share':>7} {'time':>7}")
    for r in results:
        print(f"{r.name:15} {r.killed + r.timeout:>8} {r.total:>6} {r.share:>7.1%} {r.seconds:>6.0f}s")
    killed = sum(r.killed + r.timeout for r in results)
    total = sum(r.total for r in results)
    print(f"{'all':15} {killed:>8} {total:>6} {killed / total if total else 0:>7.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
