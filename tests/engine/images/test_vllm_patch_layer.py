"""The vLLM patch layer built for real, with the image's own apply script, on a stand-in base.

The stand-in holds the real vLLM 0.33.0 Python source in site-packages but no torch and no GPU, so
the in-image smoke test runs in `compile` mode (byte-compile + symbol check of the patched modules)
instead of importing them; the arm64 image itself is built on the workstation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gh200.engine import run_output
from gh200.images.build import LABEL, ImageBuildFailed, build_image

pytestmark = [pytest.mark.engine, pytest.mark.slow]

SITE = "/usr/local/lib/python3.11/dist-packages"


def _sh(engine: Any, image: str, script: str) -> str:
    return run_output(engine, image, ["-c", script], entrypoint="/bin/sh")


def test_patch_layer_applies_and_byte_compiles_on_real_vllm_source(engine: Any, vllm_standin: str) -> None:
    result = build_image(engine, "vllm", base=vllm_standin, build_args={"SMOKE": "compile"}, progress=False)
    labels = engine.images.get(result.tag).labels
    assert labels[f"{LABEL}.recipe"] == "vllm"
    assert labels[f"{LABEL}.patch-series"]
    assert labels[f"{LABEL}.base"] == vllm_standin
    out = _sh(
        engine,
        result.tag,
        f"cd {SITE} && grep -c 'def mtp_quantization_choice' vllm/models/deepseek_v32/nvidia/mtp.py"
        " && grep -c 'hf_config_path=draft_hf_config_path(' vllm/config/speculative.py"
        " && ls vllm/models/deepseek_v32/nvidia/__pycache__/ vllm/config/__pycache__/",
    )
    lines = out.split()
    assert lines[:2] == ["1", "1"]
    assert any(name.startswith("mtp.cpython-311") for name in lines)
    assert any(name.startswith("speculative.cpython-311") for name in lines)


def test_broken_patch_fails_the_build_naming_patch_and_file(
    engine: Any, vllm_standin: str, broken_bundle: Path
) -> None:
    with pytest.raises(ImageBuildFailed) as failure:
        build_image(engine, "vllm", base=vllm_standin, build_args={"SMOKE": "compile"}, progress=False)
    message = failure.value.one_line()
    assert "0001-glm52-mtp-quantization.patch" in message
    assert "vllm/models/deepseek_v32/nvidia/mtp.py" in message
    assert "does not apply" in message
