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
        elif spec["value"] == "stage":
            problems += [f"{token} {value}: {why}" for why in _stage_refusals(value, parser["stage"])]
    return problems


def _stage_refusals(value: str, stage: dict[str, list[str]]) -> list[str]:
    """common_speculative_stage_from_arg on TYPE[:key=value,...] (no quoted or escaped commas)."""
    kind, _, options = value.partition(":")
    problems = []
    if kind.replace("-", "_") not in stage["types"]:
        problems.append(f"unknown speculative stage type: {kind}")
    for option in options.split(",") if options else []:
        key, eq, item = option.partition("=")
        key = key.lstrip("-").replace("-", "_")
        if not eq:
            problems.append(f"invalid speculative stage option: {option}")
        elif key not in stage["keys"]:
            problems.append(f"unknown speculative stage parameter: {key}")
        elif key in ("n_max", "n_min") and not (item.isdigit()):
            problems.append(f"speculative stage {key} must be an integer >= 0")
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


def test_an_ik_llama_draft_profile_renders_arguments_the_parser_takes() -> None:
    tiny = load_profile("local-tiny", PROFILES)
    assert tiny.model.draft is not None and tiny.settings.speculative is not None
    args = flags.server_args(render.argv(tiny.model_copy(update={"engine": "ik_llama"})))
    assert refused(args, _parser()) == []
    n = tiny.settings.speculative.num_speculative_tokens
    assert args[args.index("--spec-type") + 1] == f"draft:n_max={n}"
    assert "-md" in args and "--draft-max" not in args


@pytest.mark.parametrize(
    ("wrong", "line"),
    [
        # The legacy flag the pinned parser takes only to refuse it.
        (["--draft-max", "3"], "--draft-max: not a flag of ik_llama.cpp"),
        # llama.cpp's spelling of the same stage is not an ik_llama.cpp stage type.
        (["--spec-type", "draft-simple"], "--spec-type draft-simple: unknown speculative stage type"),
        (["--spec-type", "draft:n-max=3"], ""),  # '-' read as '_': taken
        (["--spec-type", "draft:max=3"], "--spec-type draft:max=3: unknown speculative stage parameter"),
        (["--spec-type", "draft:n_max"], "--spec-type draft:n_max: invalid speculative stage option"),
        (["--spec-type", "draft:n_max=-1"], "--spec-type draft:n_max=-1: speculative stage n_max must be"),
    ],
)
def test_the_stage_check_refuses_what_the_parser_refuses(wrong: list[str], line: str) -> None:
    problems = refused(wrong, _parser())
    assert problems[0].startswith(line) if line else problems == [], problems


def test_a_wrong_draft_render_for_ik_llama_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The every-setting render of the ik_llama profiles carries a draft model, so a draft flag the
    pinned parser refuses fails the check on the real profiles, not only on a test profile."""
    real = render.argv

    def legacy(profile: Any) -> list[str]:
        out = real(profile)
        if "--spec-type" in out:
            i = out.index("--spec-type")
            out[i : i + 2] = ["--draft-max", out[i + 1].rsplit("=", 1)[1]]
        return out

    rendered = flags.rendered_server_args("ik_llama", PROFILES)
    assert any("--spec-type" in args and "-md" in args for args in rendered)
    monkeypatch.setattr(render, "argv", legacy)
    problems = [
        p for args in flags.rendered_server_args("ik_llama", PROFILES) for p in refused(args, _parser())
    ]
    assert any(p.startswith("--draft-max: not a flag") for p in problems), problems
