"""tests/host/conftest.py: expectations layered from role defaults, inventory and files, rendered."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import yaml

from gh200.paths import bundle_root


def _load() -> ModuleType:
    suite = bundle_root() / "tests/host"
    spec = importlib.util.spec_from_file_location("gh200_host_conftest", suite / "conftest.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    # The suite imports its helpers (gh200_expectations, gh200_facts) from its own directory.
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(suite))
        spec.loader.exec_module(module)
    return module


def _host(backend: str, arch: str = "aarch64", inventory: dict[str, Any] | None = None) -> Any:
    return SimpleNamespace(
        backend=SimpleNamespace(NAME=backend, get_pytest_id=lambda: f"{backend}://h"),
        ansible=SimpleNamespace(get_variables=lambda: dict(inventory or {}, ansible_host="10.0.0.1")),
        system_info=SimpleNamespace(arch=arch, codename="noble"),
    )


def test_defaults_render_with_the_hosts_architecture() -> None:
    conf = _load()
    exp = conf.load_expectations(_host("local"), [])
    assert (
        exp["gh200_cuda_repo_url"]
        == "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/sbsa/"
    )
    assert exp["gh200_cuda_toolkit_package"] == "cuda-toolkit-13-0"
    assert (
        "linux-modules-nvidia-580-server-open-nvidia-64k-hwe-24.04"
        in exp["gh200_nvidia_driver_precompiled_packages"]
    )
    assert exp["gh200_container_runtime_docker_suite"] == "noble"
    x86 = conf.load_expectations(_host("local", arch="x86_64"), [])
    assert x86["gh200_cuda_repo_url"].endswith("/ubuntu2404/x86_64/")


def test_inventory_then_files_override_and_only_gh200_variables_come_in(tmp_path: Path) -> None:
    conf = _load()
    inventory = {"gh200_nvidia_driver_branch": "590", "gh200_verify_gpu_count": 2, "other": 1}
    file = tmp_path / "e.yml"
    file.write_text(yaml.safe_dump({"gh200_verify_gpu_count": 1}))
    exp = conf.load_expectations(_host("ansible", inventory=inventory), [str(file)])
    assert exp["gh200_verify_gpu_count"] == 1  # the file wins over the inventory
    assert (
        "linux-modules-nvidia-590-open-nvidia-64k-hwe-24.04"
        in exp["gh200_nvidia_driver_precompiled_packages"]
    )
    assert "other" not in exp and "ansible_host" not in exp
    assert exp.sources[1].startswith("inventory (2 gh200_ variables)") and exp.sources[2] == str(file)


def test_flags_read_yaml_and_strings(tmp_path: Path) -> None:
    conf = _load()
    exp = conf.Expect({"a": "false", "b": "yes", "c": True, "d": 0})
    assert (exp.flag("a"), exp.flag("b"), exp.flag("c"), exp.flag("d"), exp.flag("missing")) == (
        False,
        True,
        True,
        False,
        False,
    )


def test_unrenderable_values_are_left_alone() -> None:
    conf = _load()
    out = conf.render({"a": "{{ nope }}", "b": "{{ a }}-x", "c": ["{{ d }}"], "d": "v"}, {})
    assert out["a"] == "{{ nope }}" and out["c"] == ["v"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("gh200_verify_gpu_count: [2\n", "is not valid YAML at line 2"),
        ("- gh200_verify_gpu_count\n", "holds a list, not a mapping"),
        (
            "gh200_verify_gpu_cout: 2\n",
            "unknown variable 'gh200_verify_gpu_cout' (fix: did you mean gh200_verify_gpu_count?)",
        ),
        ("gpu_count: 2\n", "unknown variable 'gpu_count' (fix: did you mean gh200_verify_gpu_count?)"),
    ],
)
def test_the_suite_refuses_an_unusable_expectation_file(tmp_path: Path, content: str, message: str) -> None:
    """The suite run by pytest alone (scripts/device-verify.sh) refuses it as `gh200 verify` does."""
    conf = _load()
    file = tmp_path / "e.yml"
    file.write_text(content)
    with pytest.raises(pytest.UsageError) as err:
        conf.load_expectations(_host("local"), [str(file)])
    assert str(file) in str(err.value) and message in str(err.value)


def test_run_time_gh200_variables_from_the_verify_role_are_accepted(tmp_path: Path) -> None:
    """The verify role writes every gh200_* host variable, registered results included."""
    conf = _load()
    file = tmp_path / "e.yml"
    file.write_text(yaml.safe_dump({"gh200_run_output": {"ok": True}, "gh200_verify_gpu_count": 1}))
    exp = conf.load_expectations(_host("local"), [str(file)])
    assert exp["gh200_verify_gpu_count"] == 1 and exp["gh200_run_output"] == {"ok": True}
