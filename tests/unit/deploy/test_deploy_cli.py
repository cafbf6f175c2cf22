"""The CLI edge of deploy and bench: bad input is one line and exit 2, before any engine is touched."""

from __future__ import annotations

from collections.abc import Callable

import pytest


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["smoke"], "name a PROFILE or pass --url"),
        (["smoke", "local-tiny", "--url", "http://127.0.0.1:9"], "name a PROFILE or pass --url"),
        (["smoke", "--url", "http://127.0.0.1:9", "--gate"], "--gate needs a PROFILE"),
        (["smoke", "--url", "http://127.0.0.1:9", "--tolerance", "10"], "is not a fraction"),
        (["sweep", "local-tiny", "--spec-tokens", "0.."], "must lie within 1..16"),
        (["sweep", "glm52-awq", "--spec-tokens", "1..2"], "has no speculative decoding"),
        (["stop", "local-tiny", "--all"], "pass a NAME or --all"),
        (["logs", "local-tiny", "--tail", "-1"], "is negative"),
        (["deploy", "no-such-profile"], "no profile named 'no-such-profile'"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    args: list[str], needle: str, gh200_cli: Callable[..., tuple[int, str, str]]
) -> None:
    code, _, err = gh200_cli(args, no_engine=True)
    assert code == 2, err
    assert needle in err and err.startswith("error:") and "Traceback" not in err


def test_unreachable_url_is_a_failed_operation(gh200_cli: Callable[..., tuple[int, str, str]]) -> None:
    code, _, err = gh200_cli(["smoke", "--url", "http://127.0.0.1:9", "--no-results"], no_engine=True)
    assert code == 1 and "cannot reach http://127.0.0.1:9" in err and "Traceback" not in err
