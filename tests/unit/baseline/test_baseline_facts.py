"""Host facts from recorded command and HTTP outputs, and the changes named between two records."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from gh200 import __version__
from gh200.baseline.facts import (
    argv_change,
    collect_facts,
    fact_changes,
    fact_diff,
    parse_nvidia_smi,
    record_facts,
)

# The header of `nvidia-smi` as a 570-series driver prints it (GH200 workstation, trimmed).
NVIDIA_SMI = """\
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 570.86.15              Driver Version: 570.86.15      CUDA Version: 12.8     |
|-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
|   0  NVIDIA GH200 480GB             On  |   00000009:01:00.0 Off |                    0 |
"""


def test_parse_nvidia_smi_reads_driver_and_cuda() -> None:
    assert parse_nvidia_smi(NVIDIA_SMI) == ("570.86.15", "12.8")
    assert parse_nvidia_smi(None) == (None, None)
    assert parse_nvidia_smi("garbage") == (None, None)


def test_collect_facts_with_injected_runners() -> None:
    facts = collect_facts(
        "vllm",
        "0.33.0",
        run=lambda argv: NVIDIA_SMI if argv == ["nvidia-smi"] else None,
        uname=lambda: SimpleNamespace(release="6.8.0-1021-nvidia-64k"),
        page_size=lambda: 65536,
        hostname=lambda: "gh200-a",
    )
    assert facts.as_json() == {
        "hostname": "gh200-a",
        "kernel": "6.8.0-1021-nvidia-64k",
        "page_size": 65536,
        "bundle_version": __version__,
        "server_kind": "vllm",
        "server_version": "0.33.0",
        "driver": "570.86.15",
        "cuda": "12.8",
    }


def test_collect_facts_without_gpu_or_server() -> None:
    facts = collect_facts(
        run=lambda argv: None,
        uname=lambda: SimpleNamespace(release="6.1.0-28-amd64"),
        page_size=lambda: 4096,
        hostname=lambda: "laptop",
    )
    assert (facts.driver, facts.cuda, facts.server_version) == (None, None, None)
    assert facts.kernel == "6.1.0-28-amd64" and facts.page_size == 4096


def record(**facts: Any) -> dict[str, Any]:
    base = {
        "kernel": "6.8.0",
        "page_size": 65536,
        "driver": "570.86.15",
        "cuda": "12.8",
        "server_version": "0.33.0",
    }
    return {
        "image": "gh200/vllm:abc",
        "profile_hash": "h1",
        "model_revision": "r1",
        "bundle_version": "0.1.0",
        "facts": {**base, **facts},
    }


def test_fact_changes_names_what_differs_and_only_that() -> None:
    assert fact_changes(record(), record()) == []
    assert fact_changes(record(), record(driver="575.51.03", page_size=4096)) == [
        "driver 570.86.15 -> 575.51.03",
        "page size 65536 -> 4096",
    ]
    newer = {**record(server_version="0.34.0"), "image": "gh200/vllm:def"}
    assert fact_changes(record(), newer) == [
        "image gh200/vllm:abc -> gh200/vllm:def",
        "server version 0.33.0 -> 0.34.0",
    ]


def test_unknown_facts_are_not_changes() -> None:
    # A record from before facts were collected knows no driver: that is not "driver changed".
    old = {"image": "gh200/vllm:abc", "host": {"platform": "Linux-6.8.0-aarch64-with-glibc2.39"}}
    assert fact_changes(old, record()) == []
    # Without `facts`, the kernel comes from platform.platform(): it still counts as a change.
    older = {"host": {"platform": "Linux-6.8.0-1021-nvidia-64k-aarch64-with-glibc2.39"}}
    assert record_facts(older)["kernel"] == "6.8.0-1021-nvidia-64k"
    assert fact_changes(older, record()) == ["kernel 6.8.0-1021-nvidia-64k -> 6.8.0"]


def test_launch_args_change_names_what_was_added_and_dropped() -> None:
    old = {**record(), "launch_args": ["llama-server", "-t", "2", "--port", "8080"]}
    new = {
        **record(),
        "launch_args": ["llama-server", "-t", "1", "--port", "8080", "--spec-synth-rates", "0,0,0"],
    }
    assert fact_changes(old, new) == ["launch args -2 +1 +--spec-synth-rates 0,0,0"]
    assert fact_diff(old, new) == {"launch_args": (old["launch_args"], new["launch_args"])}
    assert fact_diff(old, old) == {}
    assert argv_change(["a", "b"], ["b", "a"]) == "+b -b"


def test_fact_diff_keeps_the_order_people_look_at() -> None:
    newer = {
        **record(driver="575.51.03", server_version="0.34.0"),
        "image": "gh200/vllm:def",
        "profile_hash": "h2",
    }
    assert list(fact_diff(record(), newer)) == ["image", "profile_hash", "server_version", "driver"]
    assert fact_diff(record(), newer)["driver"] == ("570.86.15", "575.51.03")
