"""ik_llama.cpp: every llama-server argument our renders emit, against the pinned commit's parser.

CI cannot fetch ik_llama.cpp, so the parser's flags are transcribed by hand in
containers/ik_llama/server-flags.yaml (with the commit they were read at); the image build checks
the same rendered arguments against the real binary. llama.cpp's flags are checked against its real
llama-server in tests/engine/images/test_llama_cpp_image.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from profiles_testlib import PROFILES, REPO

from gh200.profiles import flags, render
from gh200.profiles.loader import load_profile

IK = REPO / "containers" / "ik_llama"


def _parser() -> dict[str, Any]:
    data = yaml.safe_load((IK / "server-flags.yaml").read_text())
    assert isinstance(data, dict)
    return data


def refused(args: list[str], parser: dict[str, Any]) -> list[str]:
    """What ik_llama.cpp's parser (as transcribed) would refuse in `args`, one line each.

    It walks the arguments like gpt_params_parse_ex: each must be a known flag, taking its value
    (checked where the parser checks it) from the next argument; `--flag=value` is not a form it has.
    """
    known: dict[str, dict[str, Any]] = parser["flags"]
    problems = []
    i = 0
    while i < len(args):
        token = args[i]
        spec = known.get(token)
        i += 1
        if spec is None:
            problems.append(f"{token}: not a flag of ik_llama.cpp {parser['commit'][:12]}")
            continue
        if spec["value"] == "none":
            continue
        if i == len(args):
            problems.append(f"{token}: needs a value")
            break
        value = args[i]
        i += 1
        if isinstance(spec["value"], list) and value.lower() not in spec["value"]:
            problems.append(f"{token} {value}: the parser takes one of {spec['value']}")
    return problems


def test_the_transcription_is_of_the_pinned_commit() -> None:
    recipe = yaml.safe_load((IK / "recipe.yaml").read_text())
    (upstream,) = [u for u in recipe["upstream"] if u["name"] == "ik_llama.cpp"]
    assert _parser()["commit"] == upstream["commit"], (
        "recipe.yaml pins another ik_llama.cpp commit: re-check server-flags.yaml against its "
        "common/common.cpp and update `commit` there"
    )


def test_every_rendered_ik_llama_argument_is_taken_by_the_pinned_parser() -> None:
    rendered = flags.rendered_server_args("ik_llama", PROFILES)
    assert rendered, "no ik_llama profile renders"
    assert "-tb" in flags.flag_names(rendered[0])  # extra_args are part of what is checked
    parser = _parser()
    for args in rendered:
        assert refused(args, parser) == [], args


@pytest.mark.parametrize(
    ("typo", "line"),
    [
        (("--metrics", "--metrcs"), "--metrcs: not a flag of ik_llama.cpp 8337e4cd3861"),
        (("-fa", "--fa"), "--fa: not a flag"),
        (("on", "yes"), "-fa yes: the parser takes one of"),
    ],
)
def test_a_typo_in_the_render_fails_the_check(
    monkeypatch: pytest.MonkeyPatch, typo: tuple[str, str], line: str
) -> None:
    real = render.argv

    def mistyped(profile: Any) -> list[str]:
        return [typo[1] if arg == typo[0] else arg for arg in real(profile)]

    monkeypatch.setattr(render, "argv", mistyped)
    problems = [
        p for args in flags.rendered_server_args("ik_llama", PROFILES) for p in refused(args, _parser())
    ]
    assert any(p.startswith(line) for p in problems), problems


@pytest.mark.xfail(
    strict=True,
    reason="render emits --draft-max for ik_llama draft models; the pinned commit refuses it "
    "(use --spec-type draft:n_max=N,p_min=0.0). No ik_llama profile has a draft model yet.",
)
def test_an_ik_llama_draft_profile_renders_arguments_the_parser_takes() -> None:
    tiny = load_profile("local-tiny", PROFILES)
    assert tiny.model.draft is not None and tiny.settings.speculative is not None
    ik = tiny.model_copy(update={"engine": "ik_llama"})
    assert refused(flags.server_args(render.argv(ik)), _parser()) == []
