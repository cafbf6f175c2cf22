"""The graft's merged index: written line by line for speed, the very bytes json.dump(indent=2) writes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gh200.checkpoints.graft import _write_index

TEXT = st.text(st.characters(codec="utf-8"), max_size=12)  # quotes, controls, non-ASCII, U+2028


@settings(max_examples=80, deadline=None)
@given(
    st.dictionaries(TEXT, TEXT, max_size=30),
    st.dictionaries(TEXT, st.one_of(st.integers(), TEXT, st.lists(st.integers(), max_size=3)), max_size=3),
)
def test_the_index_is_json_dumps_with_indent_2(
    tmp_path_factory: pytest.TempPathFactory, weight_map: dict[str, str], metadata: dict[str, object]
) -> None:
    path = tmp_path_factory.mktemp("idx") / "model.safetensors.index.json"
    size = _write_index(path, weight_map, metadata)
    expected = json.dumps({"metadata": metadata, "weight_map": dict(sorted(weight_map.items()))}, indent=2)
    assert path.read_text() == expected + "\n"
    assert size == path.stat().st_size
    assert json.loads(path.read_text())["weight_map"] == weight_map
