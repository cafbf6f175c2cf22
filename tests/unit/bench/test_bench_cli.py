"""`gh200 smoke` / `gh200 sweep` through the real CLI entry point: bad input is one line and exit 2,
before any engine, server or file is touched; `sweep decide` on the posts' tables."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

DATA = Path(__file__).parent / "data"


def _one_line_error(code: int, err: str, needle: str) -> None:
    assert code == 2, err
    assert err.startswith("error:") and needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["sweep", "glm52-awq-mtp3", "-c", "0", "--shape", "2048:512"], "--concurrency 0 is below 1"),
        (["sweep", "glm52-awq-mtp3", "-c", "0"], "--concurrency 0 is below 1"),
        (["sweep", "glm52-awq-mtp3", "--timeout", "0"], "--timeout 0 is not a positive"),
        (["sweep", "glm52-awq-mtp3", "--warm", "-1"], "--warm -1 is negative"),
        (["sweep", "glm52-awq-mtp3", "--shape", "2048"], "bad shape '2048'"),
        (["sweep", "glm52-awq-mtp3", "--prompts", "x"], "--prompts 'x' is not a prompt mode"),
        (["sweep", "glm52-awq-mtp3", "--plot", "/tmp"], "--plot /tmp is a directory"),
        (["smoke", "local-tiny", "--timeout", "-5"], "--timeout -5 is not a positive number of seconds"),
        (["smoke", "local-tiny", "-c", "0"], "--concurrency 0 is below 1"),
        (["smoke", "local-tiny", "--shape", "10:1"], "bad shape '10:1'"),
        (["smoke", "local-tiny", "--prompts", "lorem"], "--prompts 'lorem' is not a prompt mode"),
        (["smoke", "local-tiny", "--vocab-size", "1"], "--vocab-size 1 is too small"),
        (["sweep", "decide", "/nonexistent/table.md"], "cannot read /nonexistent/table.md"),
    ],
)
def test_bad_flags_exit_2_before_anything_is_contacted(
    args: list[str], needle: str, gh200_cli: Callable[..., tuple[int, str, str]]
) -> None:
    code, _, err = gh200_cli(args, no_engine=True)
    _one_line_error(code, err, needle)


def test_results_path_is_checked_before_the_benchmark(
    tmp_path: Path, gh200_cli: Callable[..., tuple[int, str, str]]
) -> None:
    code, _, err = gh200_cli(["smoke", "local-tiny", "--results", str(tmp_path)], no_engine=True)
    _one_line_error(code, err, f"--results {tmp_path} is a directory")
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = gh200_cli(["smoke", "local-tiny", "--results", str(blocker / "r.jsonl")], no_engine=True)
    _one_line_error(code, err, f"{blocker} is not a directory")
    code, _, err = gh200_cli(["sweep", "glm52-awq-mtp3", "--results", str(tmp_path)], no_engine=True)
    _one_line_error(code, err, "is a directory")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]  # nothing written


class _Models(BaseHTTPRequestHandler):
    """Answers /v1/models like any OpenAI-compatible server; records every path asked for."""

    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.paths.append(self.path)
        if self.path == "/v1/models":
            body = json.dumps({"object": "list", "data": [{"id": "tiny"}, {"id": "tiny-draft"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def models_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Models)
    _Models.paths = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_unknown_model_at_a_url_names_what_the_server_serves(
    models_server: str, gh200_cli: Callable[..., tuple[int, str, str]]
) -> None:
    args = ["smoke", "--url", models_server, "--model", "nope", "--no-results"]
    code, _, err = gh200_cli(args, no_engine=True)
    _one_line_error(code, err, "serves tiny, tiny-draft, not 'nope'")
    assert "pass --model with one it lists: tiny, tiny-draft" in err
    assert "deploy the profile" not in err
    assert _Models.paths == ["/v1/models"]  # no benchmark request was sent


def test_sweep_decide_on_the_posts_tables(gh200_cli: Callable[..., tuple[int, str, str]]) -> None:
    code, out, err = gh200_cli(["sweep", "decide", str(DATA / "part3-awq-sweep.md")], no_engine=True)
    assert code == 0, err
    assert out.startswith("AWQ: chosen MTP-3: MTP-4 stopped the walk:")
    assert "8192->512: 6 of 11 runs accepted under 60%" in out
    code, out, err = gh200_cli(["sweep", "decide", str(DATA / "part2-canada.md"), "--json"], no_engine=True)
    assert code == 0, err
    (decision,) = json.loads(out)["decisions"]
    assert (
        decision["family"] == "Canada W4A16/FP8" and decision["chosen"] == 3 and decision["stopped_at"] == 4
    )
    code, out, _ = gh200_cli(["sweep", "decide", str(DATA / "part3-fp8-walk.md")], no_engine=True)
    assert code == 0 and out.startswith("chosen MTP-3:")
    empty = DATA.parent / "test_bench_cli.py"  # a file with no table in it
    code, _, err = gh200_cli(["sweep", "decide", str(empty)], no_engine=True)
    _one_line_error(code, err, "no table rows with a speculative depth")
