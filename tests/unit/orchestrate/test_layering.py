"""deploy and bench never import each other; baseline never imports deploy (issue 14).

Every import counts, function-local ones too (the knot this replaced hid in function bodies), and
relative imports are resolved against the module's package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[3] / "tools" / "gh200"
FORBIDDEN = {
    "deploy": ("gh200.bench", "gh200.orchestrate"),
    "bench": ("gh200.deploy", "gh200.orchestrate"),
    "baseline": ("gh200.deploy",),
    "served": ("gh200.deploy", "gh200.bench", "gh200.orchestrate", "gh200.baseline"),
}


def package_of(path: Path) -> str:
    return ".".join(("gh200", *path.relative_to(PACKAGE).parts[:-1]))


def imported_modules(path: Path, package: str) -> set[str]:
    """Every module an import statement anywhere in the file names (`from a import b` gives a and a.b)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.rstrip(".").split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def offending(path: Path, forbidden: tuple[str, ...], package: str | None = None) -> list[str]:
    found = imported_modules(path, package or package_of(path))
    return sorted(m for m in found if any(m == f or m.startswith(f + ".") for f in forbidden))


def _modules(part: str) -> list[Path]:
    target = PACKAGE / part
    return [target.with_suffix(".py")] if not target.is_dir() else sorted(target.rglob("*.py"))


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_no_module_imports_across_the_layers(part: str) -> None:
    modules = _modules(part)
    assert modules, f"no modules under {part}"
    bad = {str(p.relative_to(PACKAGE)): offending(p, FORBIDDEN[part]) for p in modules}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_checker_sees_function_local_and_relative_imports(tmp_path: Path) -> None:
    probe = tmp_path / "late.py"
    probe.write_text(
        "import gh200.bench.stats\n"
        "def late():\n"
        "    from gh200.deploy.deploy import deploy\n"
        "    from ..deploy import cli\n"
        "    import gh200.orchestrate.rollout\n"
        "    return deploy, cli, gh200\n"
    )
    assert offending(probe, FORBIDDEN["bench"], package="gh200.bench") == [
        "gh200.deploy",
        "gh200.deploy.cli",
        "gh200.deploy.deploy",
        "gh200.deploy.deploy.deploy",
        "gh200.orchestrate.rollout",
    ]
    assert offending(probe, ("gh200.benchmark",), package="gh200.bench") == []
