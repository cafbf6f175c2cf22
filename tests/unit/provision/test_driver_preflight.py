"""The driver preflight (role file driver_preflight.py): which pins apt can satisfy.

Fed with `apt-cache show` text shaped like noble's (the module package's >=/<= range on
nvidia-kernel-common), compared with dpkg's own version rules (`dpkg --compare-versions`).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from gh200.paths import ansible_dir

pytestmark = pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg (dpkg --compare-versions)")


def _load() -> ModuleType:
    path = ansible_dir() / "roles" / "gh200_nvidia_driver" / "files" / "driver_preflight.py"
    spec = importlib.util.spec_from_file_location("driver_preflight", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["driver_preflight"] = module
    spec.loader.exec_module(module)
    return module


pf = _load()
B = "580-server"
OLD, NEW = "580.105.08-0ubuntu0.24.04.2", "580.126.09-0ubuntu0.24.04.1"


def _stanza(name: str, version: str, depends: str = "") -> str:
    text = f"Package: {name}\nVersion: {version}\nArchitecture: arm64\n"
    return text + (f"Depends: {depends}\n" if depends else "") + "Description: x\n continued\n"


def _modules(abi: str, version: str, driver: str) -> str:
    return _stanza(
        f"linux-modules-nvidia-{B}-open-{abi}",
        version,
        f"linux-image-{abi} | linux-image-unsigned-{abi}, nvidia-kernel-common-{B} (<= {driver}-1),"
        f" nvidia-kernel-common-{B} (>= {driver})",
    )


ARCHIVE = {
    f"linux-modules-nvidia-{B}-open-nvidia-64k-hwe-24.04": _stanza(
        f"linux-modules-nvidia-{B}-open-nvidia-64k-hwe-24.04",
        "6.14.0-1015.15~24.04.1",
        f"linux-modules-nvidia-{B}-open-6.14.0-1015-nvidia-64k (= 6.14.0-1015.15~24.04.1)",
    ),
    f"linux-modules-nvidia-{B}-open-6.14.0-1015-nvidia-64k": _modules(
        "6.14.0-1015-nvidia-64k", "6.14.0-1015.15~24.04.1", "580.126.09"
    ),
    f"linux-modules-nvidia-{B}-open-6.14.0-1013-nvidia-64k": _modules(
        "6.14.0-1013-nvidia-64k", "6.14.0-1013.13~24.04.1", "580.105.08"
    ),
    f"nvidia-kernel-common-{B}": _stanza(f"nvidia-kernel-common-{B}", OLD)
    + "\n"
    + _stanza(f"nvidia-kernel-common-{B}", NEW),
}


def _dpkg(a: str, op: str, b: str) -> bool:
    ops = {">=": "ge", "<=": "le", "=": "eq", "<<": "lt", ">>": "gt"}
    return subprocess.run(["dpkg", "--compare-versions", a, ops[op], b], check=False).returncode == 0


def _check(version: str, flavour: str, archive: dict[str, str] = ARCHIVE) -> object:
    names = sorted(n for n in archive if n.startswith(f"linux-modules-nvidia-{B}-open-"))
    return pf.check(B, version, flavour, lambda n: archive.get(n, ""), _dpkg, lambda: names)


def test_the_pin_against_the_flavour_meta_is_refused_naming_what_works() -> None:
    verdict = _check("580.105.08", "nvidia-64k-hwe-24.04")
    assert verdict.ok is False
    assert verdict.needs == ["<= 580.126.09-1", ">= 580.126.09"]
    assert verdict.working == ["580.126.09"]
    assert verdict.matched_sets == ["6.14.0-1013-nvidia-64k"]
    assert "driver pin 580.105.08 cannot be installed" in verdict.message
    assert "gh200_nvidia_driver_kernel_flavour: 6.14.0-1013-nvidia-64k" in verdict.message


def test_the_matched_set_and_the_branch_only_are_accepted() -> None:
    assert _check("580.105.08", "6.14.0-1013-nvidia-64k").ok is True
    branch_only = _check("", "nvidia-64k-hwe-24.04")
    assert branch_only.ok is True and branch_only.working == ["580.126.09"]
    assert _check("580.126.09", "nvidia-64k-hwe-24.04").ok is True


def test_the_upper_bound_bites() -> None:
    """A build newer than the one the modules were compiled against is refused too (the <= half)."""
    newer = dict(ARCHIVE)
    newer[f"nvidia-kernel-common-{B}"] += "\n" + _stanza(f"nvidia-kernel-common-{B}", "580.126.20-0ubuntu1")
    verdict = _check("580.126.20", "nvidia-64k-hwe-24.04", newer)
    assert verdict.ok is False and verdict.working == ["580.126.09"]


def test_unknown_module_package_and_unoffered_version() -> None:
    assert "apt knows no package" in _check("", "no-such-flavour").message
    verdict = _check("580.999.01", "6.14.0-1013-nvidia-64k")
    assert (
        verdict.ok is False and "apt offers no nvidia-kernel-common-580-server 580.999.01" in verdict.message
    )


def test_relations_parse_alternatives_and_ranges() -> None:
    assert pf.relations("a (>= 1), b | c (<< 2:3-1), d:any") == [
        [("a", ">=", "1")],
        [("b", "", ""), ("c", "<<", "2:3-1")],
        [("d", "", "")],
    ]


def test_main_prints_one_json_line_and_exits_2_when_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(pf, "_apt_show", lambda n: ARCHIVE.get(n, ""))
    monkeypatch.setattr(pf, "_module_names", lambda b: lambda: sorted(ARCHIVE))
    rc = pf.main(["--branch", B, "--version", "580.105.08", "--flavour", "nvidia-64k-hwe-24.04"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 2 and len(out) == 1 and '"ok": false' in out[0]


def test_the_preflight_runs_before_anything_changes_the_host() -> None:
    book = (Path(ansible_dir()) / "playbooks" / "provision.yml").read_text()
    assert book.index("tasks_from: preflight") < book.index("name: gh200_kernel\n")
