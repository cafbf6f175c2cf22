"""The ruler's arithmetic pinned to the GLM-5.2 post ("A Bandwidth Guestimate", gh200-part3 lines 33-45).

Inputs from the post: 684 GiB of routed FP8 experts, 256 experts, 8 active, local 377-380 GB/s,
remote 133 GB/s, staged 57-58 GB/s. Its table: 21.38 GiB/token; 15-18 tok/s serialised; 15-18 for
two modules without overlap; 30-36 aggregate for the ideal pipeline; about 6 remote; 2-3 staged.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gh200.ruler import ruler as r

GIB, GB = r.GIB, r.GB
POST_MODEL = r.ModelBytes(684 * GIB, 256, 8, None, "GLM-5.2 post")
POST_BW = {name: r.Bandwidth(lo, hi, "post") for name, (lo, hi) in r.POSTS_BANDWIDTHS.items()}


@pytest.fixture
def rows() -> dict[str, r.Row]:
    return {row.key: row for row in r.compute_rows(POST_MODEL, POST_BW)}


def within(values: tuple[float, float], low: float, high: float) -> bool:
    return low <= min(values) and max(values) <= high


def test_post_inputs_are_the_defaults() -> None:
    assert r.POSTS_BANDWIDTHS["local"] == (377.0, 380.0)
    assert r.POSTS_BANDWIDTHS["remote"] == (133.0, 133.0)
    assert r.POSTS_BANDWIDTHS["staged"] == (57.0, 58.0)
    known = r.KNOWN_MODELS["zai-org/GLM-5.2-FP8"]
    assert (known.routed_expert_bytes, known.n_routed_experts, known.n_active_experts) == (684 * GIB, 256, 8)


def test_active_expert_stream_is_21_38_gib(rows: dict[str, r.Row]) -> None:
    assert POST_MODEL.active_fraction == 1 / 32
    assert POST_MODEL.active_expert_bytes == 684 * GIB / 32
    assert f"{POST_MODEL.active_expert_bytes / GIB:.2f}" == "21.38"
    # The same stream in decimal units: the post's "factor of about 1.074".
    assert POST_MODEL.active_expert_bytes / GB == pytest.approx(22.951, abs=1e-3)
    assert pytest.approx(1.074, abs=1e-3) == r.GIB_PER_GB
    assert rows["serialised"].stream_text == "21.38 GiB/token"
    assert rows["split_no_overlap"].stream_text == "10.69 GiB/token per module, 2 sequential stages"
    assert rows["split_pipeline"].stream_text == "10.69 GiB/token per module"
    assert rows["remote"].stream_text == rows["staged"].stream_text == "21.38 GiB/token"


def test_serialised_15_to_18(rows: dict[str, r.Row]) -> None:
    row = rows["serialised"]
    # The post's arithmetic: the GiB count over GB/s.
    assert row.tok_s_post == pytest.approx((377 / 21.375, 380 / 21.375))
    assert row.tok_s_post == pytest.approx((17.637, 17.778), abs=1e-3)
    # Unit-correct: bytes over bytes per second, 7.4% lower.
    assert row.tok_s_exact == pytest.approx((16.426, 16.557), abs=1e-3)
    assert round(row.tok_s_post[1]) == 18  # the post's upper end
    assert within(row.tok_s_post, 15, 18) and within(row.tok_s_exact, 15, 18)
    assert row.band == pytest.approx((16.426, 17.778), abs=1e-3)
    assert r.band_text(row.band) == "16-18"


def test_two_modules_without_overlap_equal_serialised(rows: dict[str, r.Row]) -> None:
    split, serial = rows["split_no_overlap"], rows["serialised"]
    assert split.stage_gib == pytest.approx(10.6875)
    assert split.tok_s_exact == pytest.approx(serial.tok_s_exact)
    assert split.tok_s_post == pytest.approx(serial.tok_s_post)
    assert within(split.band, 15, 18)


def test_ideal_pipeline_30_to_36_aggregate(rows: dict[str, r.Row]) -> None:
    row = rows["split_pipeline"]
    assert row.aggregate
    assert row.tok_s_post == pytest.approx((35.275, 35.556), abs=1e-3)
    assert row.tok_s_exact == pytest.approx((32.852, 33.114), abs=1e-3)
    assert round(row.tok_s_post[1]) == 36
    assert within(row.band, 30, 36)
    assert row.tok_s_exact == pytest.approx(tuple(2 * v for v in rows["serialised"].tok_s_exact))


def test_remote_about_6(rows: dict[str, r.Row]) -> None:
    row = rows["remote"]
    assert row.tok_s_post[0] == pytest.approx(6.222, abs=1e-3)
    assert row.tok_s_exact[0] == pytest.approx(5.795, abs=1e-3)
    assert round(row.tok_s_post[0]) == round(row.tok_s_exact[0]) == 6
    assert r.band_text(row.band) == "about 6"


def test_staged_2_to_3(rows: dict[str, r.Row]) -> None:
    row = rows["staged"]
    assert row.tok_s_post == pytest.approx((2.667, 2.713), abs=1e-3)
    assert row.tok_s_exact == pytest.approx((2.484, 2.527), abs=1e-3)
    assert within(row.band, 2, 3)
    assert r.band_text(row.band) == "2-3"


def test_post_convention_is_high_by_the_gib_factor(rows: dict[str, r.Row]) -> None:
    # Dividing GiB by GB/s overstates tok/s by exactly 2^30 / 10^9 in every row.
    for row in rows.values():
        assert row.tok_s_post[0] / row.tok_s_exact[0] == pytest.approx(r.GIB_PER_GB)
        assert row.tok_s_post[1] / row.tok_s_exact[1] == pytest.approx(r.GIB_PER_GB)


def test_rows_in_the_posts_order_and_wording(rows: dict[str, r.Row]) -> None:
    assert [row.assumption for row in r.compute_rows(POST_MODEL, POST_BW)] == [
        "One module effectively serializes the stream",
        "Two modules split the layers, no pipeline overlap",
        "Two modules split the layers, ideal steady pipeline",
        "Offloaded experts are interleaved or remote",
        "Traffic falls onto the staged Hopper-to-Hopper path",
    ]


def test_dense_bytes_read_from_hbm() -> None:
    model = r.ModelBytes(684 * GIB, 256, 8, 20 * GIB, "test")
    rows = {row.key: row for row in r.compute_rows(model, POST_BW)}
    serial = rows["serialised"]
    expected = 1 / (model.active_expert_bytes / (377 * GB) + 20 * GIB / (3700 * GB))
    assert serial.tok_s_with_dense is not None
    assert serial.tok_s_with_dense[0] == pytest.approx(expected)
    pipe = rows["split_pipeline"].tok_s_with_dense
    assert pipe is not None
    assert pipe[0] == pytest.approx(1 / (model.active_expert_bytes / 2 / (377 * GB) + 10 * GIB / (3700 * GB)))
    # Without dense bytes, or without an hbm figure, there is no dense column.
    assert rows["remote"].tok_s_with_dense is not None
    no_hbm = {k: v for k, v in POST_BW.items() if k != "hbm"}
    assert all(row.tok_s_with_dense is None for row in r.compute_rows(model, no_hbm))
    assert all(row.tok_s_with_dense is None for row in r.compute_rows(POST_MODEL, POST_BW))


@pytest.mark.parametrize(
    ("measured", "verdict", "nearest"),
    [
        (20.31, "partial_overlap", "serialised"),  # the post's FP8 non-MTP result (line 61)
        (27.0, "partial_overlap", "split_pipeline"),
        (2.39, "remote_or_cross_module", "staged"),  # the post's first FP8 baseline (line 54)
        (5.5, "remote_or_cross_module", "remote"),
        (17.0, "local_streaming", "serialised"),
        (15.0, "local_streaming", "serialised"),
        (12.0, "local_streaming", "serialised"),
        (9.0, "remote_or_cross_module", "remote"),
        (34.0, "ideal_pipeline", "split_pipeline"),
        (43.39, "above_ceiling", "split_pipeline"),  # MTP lifts output tok/s past the non-MTP ruler
    ],
)
def test_verdicts(measured: float, verdict: str, nearest: str) -> None:
    rows = r.compute_rows(POST_MODEL, POST_BW)
    got = r.judge(measured, rows)
    assert (got.verdict, got.nearest_row) == (verdict, nearest)
    assert got.message.startswith(r.VERDICTS[verdict])
    assert got.distances["serialised"] == pytest.approx(
        0.0 if 16.426 <= measured <= 17.778 else min(abs(math.log(measured / b)) for b in rows[0].band),
        abs=1e-3,
    )


def test_verdict_language() -> None:
    rows = r.compute_rows(POST_MODEL, POST_BW)
    assert "local C2C" in r.judge(16.5, rows).message
    wrong = r.judge(3.0, rows).message
    assert "remote-memory or cross-module" in wrong and "settings are wrong" in wrong
    assert "partial pipeline overlap" in r.judge(20.31, rows).message
    below = r.judge(15.0, rows).message
    assert "9% under the ceiling" in below


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_measured_must_be_positive(bad: float) -> None:
    with pytest.raises(r.RulerInputError):
        r.judge(bad, r.compute_rows(POST_MODEL, POST_BW))


def test_missing_paths_leave_rows_out() -> None:
    only_local = {"local": r.Bandwidth(54.31, 54.31, "probe")}
    rows = r.compute_rows(POST_MODEL, only_local)
    assert [row.key for row in rows] == ["serialised", "split_no_overlap", "split_pipeline"]
    assert r.missing_rows(only_local) == [("remote", "remote"), ("staged", "staged")]
    assert r.judge(2.3, rows).verdict == "local_streaming"
    no_local = {"remote": r.Bandwidth(133, 133, "x")}
    with pytest.raises(r.RulerInputError, match="local"):
        r.judge(5.0, r.compute_rows(POST_MODEL, no_local))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("684GiB", 684 * GIB),
        ("684 gib", 684 * GIB),
        ("734GB", 734 * GB),
        ("1.5TiB", 3 * 2**39),
        ("2TB", 2 * 10**12),
        ("123456", 123456),
        ("123456B", 123456),
        ("512MiB", 512 * 2**20),
        ("64KB", 64_000),
    ],
)
def test_parse_bytes(text: str, expected: int) -> None:
    assert r.parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "12XB", "0", "0GiB", "-1GiB", "1e3", "684 GiBs", "1,5GB"])
def test_parse_bytes_rejects(text: str) -> None:
    with pytest.raises(r.RulerInputError) as err:
        r.parse_bytes(text)
    assert "GiB" in err.value.fix or "above zero" in err.value.fix


def test_parse_bandwidth() -> None:
    assert r.parse_bandwidth("local=377:380") == ("local", r.Bandwidth(377.0, 380.0, "--bandwidth"))
    assert r.parse_bandwidth("REMOTE=133") == ("remote", r.Bandwidth(133.0, 133.0, "--bandwidth"))
    assert r.parse_bandwidth("staged=58:57")[1] == r.Bandwidth(57.0, 58.0, "--bandwidth")
    assert r.parse_bandwidth("hbm=3700")[1].high_gbps == 3700.0


@pytest.mark.parametrize(
    "text", ["local", "foo=1", "local=", "local=a", "local=0", "local=1:2:3", "local=-5", "local=nan"]
)
def test_parse_bandwidth_rejects(text: str) -> None:
    with pytest.raises(r.RulerInputError) as err:
        r.parse_bandwidth(text)
    assert "NAME=GBPS" in err.value.fix


def test_model_bytes_validation() -> None:
    with pytest.raises(r.RulerInputError, match="exceed"):
        r.ModelBytes(GIB, 8, 9, None, "x")
    with pytest.raises(r.RulerInputError):
        r.ModelBytes(0, 8, 1, None, "x")
    with pytest.raises(r.RulerInputError):
        r.ModelBytes(GIB, 0, 0, None, "x")
    with pytest.raises(r.RulerInputError):
        r.ModelBytes(GIB, 8, 1, -1, "x")


def test_json_shapes() -> None:
    row = r.compute_rows(POST_MODEL, POST_BW)[0]
    data = r.row_to_json(row)
    assert data["band_text"] == "16-18" and data["band_rounded"] == [16, 18]
    assert data["bandwidth"] == {"low_gbps": 377.0, "high_gbps": 380.0, "source": "post"}
    model = r.model_to_json(POST_MODEL)
    assert model["active_expert_gib"] == pytest.approx(21.375)


@given(
    routed_gib=st.floats(1, 4096),
    experts=st.integers(1, 512),
    active_share=st.floats(0.001, 1.0),
    low=st.floats(1, 5000),
    spread=st.floats(1, 2),
)
def test_properties(routed_gib: float, experts: int, active_share: float, low: float, spread: float) -> None:
    active = max(1, min(experts, round(experts * active_share)))
    model = r.ModelBytes(round(routed_gib * GIB), experts, active, None, "h")
    bw = {name: r.Bandwidth(low, low * spread, "h") for name in ("local", "remote", "staged")}
    rows = {row.key: row for row in r.compute_rows(model, bw)}
    for row in rows.values():
        assert row.tok_s_exact[0] <= row.tok_s_exact[1]
        assert row.tok_s_exact[1] < row.tok_s_post[1]
        assert row.band[0] == row.tok_s_exact[0] and row.band[1] == row.tok_s_post[1]
        # tok/s x bytes per token = bandwidth.
        assert row.tok_s_exact[0] * row.token_bytes == pytest.approx(low * GB)
    assert rows["split_pipeline"].tok_s_exact[0] == pytest.approx(2 * rows["serialised"].tok_s_exact[0])
    assert rows["split_no_overlap"].tok_s_exact == pytest.approx(rows["serialised"].tok_s_exact)
