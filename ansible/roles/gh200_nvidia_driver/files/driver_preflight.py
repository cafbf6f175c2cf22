#!/usr/bin/env python3
"""Preflight of the NVIDIA driver pin: can apt install this branch/version with this kernel's modules?

Ubuntu compiles each precompiled module package (linux-modules-nvidia-BRANCH-open-ABI) against one
driver build: it depends on nvidia-kernel-common-BRANCH (>= V) and (<= V-1). A version pin that
misses that build leaves apt with "held broken packages" half-way through a run. This reads the
dependency fields apt sees (`apt-cache show`, no python-apt), compares versions with dpkg's own
rules (`dpkg --compare-versions`), and refuses an unsatisfiable set before anything is installed,
naming the versions, and the kernel ABIs (matched sets), that would work.

Runs on the host (stdlib only; the role copies it there with ansible.builtin.script).
Prints one JSON object (its "message" says why, when refused); exit 0 when the set can be installed, 2 when it cannot.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

Show = Callable[[str], str]
Compare = Callable[[str, str, str], bool]

DPKG_OPS = {">=": "ge", "<=": "le", "=": "eq", "<<": "lt", ">>": "gt"}


def stanzas(text: str) -> list[dict[str, str]]:
    """RFC 822 stanzas of `apt-cache show` output (continuation lines folded into their field)."""
    out: list[dict[str, str]] = []
    for block in re.split(r"\n\s*\n", text.strip()):
        fields: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
        if fields.get("Package"):
            out.append(fields)
    return out


def relations(field_text: str) -> list[list[tuple[str, str, str]]]:
    """A Depends field: a list of alternatives, each (name, operator, version) with "" when none."""
    result = []
    for group in field_text.split(","):
        alts = []
        for alt in group.split("|"):
            m = re.match(r"\s*([^\s(:]+)(?::\S+)?\s*(?:\(\s*(<<|<=|=|>=|>>)\s*([^)\s]+)\s*\))?", alt)
            if m and m.group(1):
                alts.append((m.group(1), m.group(2) or "", m.group(3) or ""))
        if alts:
            result.append(alts)
    return result


def upstream(version: str) -> str:
    return version.rsplit("-", 1)[0] if "-" in version else version


@dataclass
class Verdict:
    ok: bool
    modules: str
    modules_version: str = ""
    needs: list[str] = field(default_factory=list)
    pinned: str = ""
    working: list[str] = field(default_factory=list)
    matched_sets: list[str] = field(default_factory=list)
    message: str = ""


def _newest(versions: list[str], compare: Compare) -> str:
    best = versions[0]
    for v in versions[1:]:
        if compare(v, ">>", best):
            best = v
    return best


def module_constraints(
    name: str, show: Show, compare: Compare, common: str
) -> tuple[str, list[tuple[str, str]]]:
    """(candidate version, constraints on `common`) of a module package, following a meta package
    down to the ABI-specific module package it depends on (= version)."""
    found = stanzas(show(name))
    if not found:
        return "", []
    candidate = _newest([s["Version"] for s in found], compare)
    stanza = next(s for s in found if s["Version"] == candidate)
    deps = relations(stanza.get("Depends", ""))
    direct = [(op, ver) for group in deps for (n, op, ver) in group if n == common and op]
    if direct:
        return candidate, direct
    for group in deps:
        for dep, op, ver in group:
            if dep.startswith("linux-modules-nvidia-") and dep != name:
                inner = [s for s in stanzas(show(dep)) if not op or compare(s["Version"], op, ver)]
                if inner:
                    pick = _newest([s["Version"] for s in inner], compare)
                    chosen = next(s for s in inner if s["Version"] == pick)
                    cons = [
                        (o, v)
                        for g in relations(chosen.get("Depends", ""))
                        for (n, o, v) in g
                        if n == common and o
                    ]
                    if cons:
                        return candidate, cons
    return candidate, []


def check(
    branch: str,
    version: str,
    flavour: str,
    show: Show,
    compare: Compare,
    module_names: Callable[[], list[str]],
) -> Verdict:
    modules = f"linux-modules-nvidia-{branch}-open-{flavour}"
    common = f"nvidia-kernel-common-{branch}"
    verdict = Verdict(ok=False, modules=modules, pinned=version)
    candidate, cons = module_constraints(modules, show, compare, common)
    if not candidate:
        verdict.message = (
            f"apt knows no package {modules} (fix: check gh200_nvidia_driver_branch and "
            f"gh200_nvidia_driver_kernel_flavour against `apt-cache search linux-modules-nvidia-{branch}-open`)"
        )
        return verdict
    verdict.modules_version = candidate
    verdict.needs = [f"{op} {ver}" for op, ver in cons]
    offered = sorted({s["Version"] for s in stanzas(show(common))})

    def fits(v: str) -> bool:
        return all(compare(v, op, ver) for op, ver in cons)

    verdict.working = sorted({upstream(v) for v in offered if fits(v)})
    if not version:
        verdict.ok = bool(verdict.working)
        if not verdict.ok:
            verdict.message = (
                f"{modules} {candidate} needs {common} {' and '.join(verdict.needs)}, which apt does not offer "
                f"(offered: {', '.join(offered) or 'none'}; fix: apt-get update, or choose another flavour)"
            )
        return verdict
    pinned = [v for v in offered if upstream(v) == version]
    verdict.ok = any(fits(v) for v in pinned)
    if verdict.ok:
        return verdict
    for other in module_names():
        abi = other.removeprefix(f"linux-modules-nvidia-{branch}-open-")
        if other == modules or not abi[:1].isdigit():
            continue
        _, other_cons = module_constraints(other, show, compare, common)
        if other_cons and any(all(compare(v, op, ver) for op, ver in other_cons) for v in pinned):
            verdict.matched_sets.append(abi)
    verdict.matched_sets.sort()
    works = ", ".join(verdict.working) or "none"
    sets = "; ".join(
        f"gh200_kernel_packages: [linux-image-{abi}] with gh200_nvidia_driver_kernel_flavour: {abi}"
        for abi in verdict.matched_sets
    )
    why = (
        f"apt offers no {common} {version}"
        if not pinned
        else f"{modules} {candidate} was built for {common} {' and '.join(verdict.needs)}"
    )
    verdict.message = (
        f"driver pin {version} cannot be installed: {why}; versions that would work with it: {works}"
        + (f"; matched sets that keep {version}: {sets}" if sets else "")
        + ' (fix: set gh200_nvidia_driver_version to a working version, or "" for the branch only'
        + (", or pin a matched set)" if sets else ")")
    )
    return verdict


def _apt_show(name: str) -> str:
    done = subprocess.run(["apt-cache", "show", name], capture_output=True, text=True, check=False)
    return done.stdout if done.returncode == 0 else ""


def _dpkg_compare(a: str, op: str, b: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", a, DPKG_OPS[op], b], check=False).returncode == 0


def _module_names(branch: str) -> Callable[[], list[str]]:
    def names() -> list[str]:
        prefix = f"linux-modules-nvidia-{branch}-open-"
        done = subprocess.run(["apt-cache", "pkgnames", prefix], capture_output=True, text=True, check=False)
        return sorted(done.stdout.split())

    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--branch", required=True)
    parser.add_argument("--version", default="")
    parser.add_argument("--flavour", required=True)
    args = parser.parse_args(argv)
    verdict = check(
        args.branch, args.version, args.flavour, _apt_show, _dpkg_compare, _module_names(args.branch)
    )
    # One JSON line on stdout only: over SSH with a terminal, stderr would land in stdout too.
    print(json.dumps(asdict(verdict)))
    return 0 if verdict.ok else 2


if __name__ == "__main__":
    sys.exit(main())
