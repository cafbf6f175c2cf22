"""Read run-set figures back from Markdown tables in the posts' layouts (and the report's own).

`gh200 sweep decide TABLE` feeds what this reads to the rule. Understood layouts:
- Part 3's sweep table and the report's: Profile | Shape | Runs | Median output tok/s | ... | P10 |
  P90 | CV | ... | Median acceptance | Sub-60 acceptance runs (an optional Concurrency column);
- Part 3's FP8 walk: Spec tokens | Shape | Cold output tok/s | Warm output tok/s | Warm acceptance
  (warm-only figures, as the post judged them; the cold run and the Decision column are not read);
- Part 2's: Model | MTP level | Output throughput | ... | Acceptance (one figure per depth).
The depth comes from a Spec tokens / MTP level column, else from the Profile or Model cell
(`spec=3`, `MTP-3`, `MTP3`, `non-MTP`). Rows of one family (that cell without its depth) are
decided together; real-prompt rows are not a shape the rule walks.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from gh200.bench.rule import Depth, ShapeFigures
from gh200.bench.stats import SUB60_THRESHOLD, describe
from gh200.errors import BadInput

_NUMBER = re.compile(r"\d+(?:\.\d+)?")  # figures here are never negative; `a-b` is a range
_DEPTH_COLUMNS = ("spec tokens", "speculative tokens", "mtp level", "mtp", "depth")
_NAME_COLUMNS = ("profile", "model", "config")
_MEDIAN_COLUMNS = ("median output tok/s", "output throughput", "output tok/s")
_WARM_COLUMNS = ("warm output tok/s",)
_ACCEPT_COLUMNS = ("median acceptance", "warm acceptance", "acceptance")
NO_SHAPE = "(one shape)"


@dataclass
class _Row:
    family: str
    tokens: int
    shape: str
    figures: ShapeFigures


def _cells(line: str) -> list[str] | None:
    stripped = line.strip()
    if not stripped.startswith("|"):
        return None
    inner = stripped[1:-1] if stripped.endswith("|") else stripped[1:]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]


def _is_separator(cells: list[str]) -> bool:
    return bool(cells) and all(re.fullmatch(r":?-{3,}:?", c.replace(" ", "")) for c in cells)


def split_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """(header, rows) of every pipe table in the text. A table starts at a header row followed by a
    separator row, even right under another table's last row (concatenated reports)."""
    tables: list[tuple[list[str], list[list[str]]]] = []
    previous: list[str] | None = None
    current: tuple[list[str], list[list[str]]] | None = None
    for line in text.splitlines():
        cells = _cells(line)
        if cells is None:
            current, previous = None, None
            continue
        if _is_separator(cells) and previous is not None:
            if current is not None and current[1] and current[1][-1] is previous:
                current[1].pop()  # that row was the next table's header
            current = (previous, [])
            tables.append(current)
        elif current is not None:
            current[1].append(cells)
        previous = cells
    return tables


def depth_of(text: str) -> int | None:
    """Speculative tokens named in a cell: `spec=3`, `MTP-3`, `MTP3`, `3`; `non-MTP` is 0."""
    lowered = text.strip().lower()
    found = re.search(r"spec\s*=\s*(\d+)", lowered)
    if found:
        return int(found.group(1))
    if re.search(r"\b(non|no|without)[- ]mtp\b", lowered):
        return 0
    found_all = re.findall(r"mtp[-_ ]?(\d+)", lowered)
    if found_all:
        return int(found_all[-1])  # `glm52-awq-mtp3 MTP-4`: the later one is the depth run
    if re.fullmatch(r"\d+", lowered):
        return int(lowered)
    return None


def _family(text: str) -> str:
    lowered = re.sub(r"spec\s*=\s*\d+|\b(non|no|without)[- ]mtp\b", "", text, flags=re.IGNORECASE)
    if re.search(r"spec\s*=", text, re.IGNORECASE) is None:
        # The last MTP-n names the depth; an earlier one is part of the profile's name.
        matches = list(re.finditer(r"mtp[-_ ]?\d+", lowered, re.IGNORECASE))
        if matches:
            last = matches[-1]
            lowered = lowered[: last.start()] + lowered[last.end() :]
    return re.sub(r"[\s+,;:/-]+$", "", re.sub(r"^[\s+,;:/-]+", "", lowered)).strip()


def _numbers(cell: str) -> list[float]:
    return [float(n) for n in _NUMBER.findall(cell.replace(",", " "))] if cell else []


def _col(header: list[str], names: tuple[str, ...]) -> int | None:
    lowered = [h.strip().lower() for h in header]
    for name in names:
        if name in lowered:
            return lowered.index(name)
    return None


def _shape(cell: str, concurrency: str | None) -> str:
    text = " ".join(cell.split())
    text = re.sub(r"^1\s*x\s*", "", text)
    if concurrency and concurrency.strip() not in ("", "1"):
        text = f"{concurrency.strip()} x {text}"
    return text


def _acceptance_sub60(cell: str, runs: int | None) -> tuple[int | None, int | None]:
    """(runs, runs known under 60%) from an acceptance cell: one median, or a min-max range."""
    if not cell or cell.strip().lower() in ("n/a", "-", ""):
        return runs, None
    values = [float(v) / 100.0 for v in _NUMBER.findall(cell)]
    if not values:
        return runs, None
    n = runs or 1
    if len(values) == 1:
        # At least half the runs lie at or below a median: under 60%, they all accepted under 60%.
        return n, (math.ceil(n / 2) if values[0] < SUB60_THRESHOLD else 0)
    low, high = min(values), max(values)
    if high < SUB60_THRESHOLD:
        return n, n
    return n, 1 if low < SUB60_THRESHOLD else 0


def _row_figures(header: list[str], row: list[str]) -> ShapeFigures | None:
    def cell(index: int | None) -> str:
        return row[index] if index is not None and index < len(row) else ""

    warm = _col(header, _WARM_COLUMNS)
    runs_col = _col(header, ("runs",))
    runs_values = _numbers(cell(runs_col))
    runs = int(runs_values[0]) if runs_values else None
    p10: float | None
    cv: float | None
    if warm is not None and _numbers(cell(warm)):
        stats = describe(_numbers(cell(warm)))
        assert stats is not None
        median, p10, cv, runs = stats.median, stats.p10, stats.cv, stats.n
    else:
        median_col = _col(header, _MEDIAN_COLUMNS)
        values = _numbers(cell(median_col))
        if not values:
            return None
        median = values[0]
        p10_values = _numbers(cell(_col(header, ("p10",))))
        cv_values = _numbers(cell(_col(header, ("cv",))))
        p10 = p10_values[0] if p10_values else None
        cv = cv_values[0] if cv_values else None
    sub60_col = _col(header, ("sub-60 acceptance runs", "sub-60"))
    sub60_values = _numbers(cell(sub60_col))
    if sub60_values:
        sub60: int | None = int(sub60_values[0])
    else:
        runs, sub60 = _acceptance_sub60(cell(_col(header, _ACCEPT_COLUMNS)), runs)
    return ShapeFigures(median=median, p10=p10, cv=cv, runs=runs, sub60_runs=sub60)


def read_depths(text: str) -> dict[str, list[Depth]]:
    """Per family, the depths found in the text's tables. Bad or empty input is BadInput."""
    rows: list[_Row] = []
    unmarked: list[_Row] = []  # `glm52-awq` beside `glm52-awq-mtp3`: the same family without MTP
    for header, body in split_tables(text):
        depth_col = _col(header, _DEPTH_COLUMNS)
        name_col = _col(header, _NAME_COLUMNS)
        if depth_col is None and name_col is None:
            continue
        if _col(header, _MEDIAN_COLUMNS + _WARM_COLUMNS) is None:
            continue
        shape_col = _col(header, ("shape",))
        conc_col = _col(header, ("concurrency",))
        for row in body:
            name = row[name_col] if name_col is not None and name_col < len(row) else ""
            source = row[depth_col] if depth_col is not None and depth_col < len(row) else name
            tokens = depth_of(source)
            if tokens is None and (depth_col is not None or not name.strip()):
                continue
            shape_cell = row[shape_col] if shape_col is not None and shape_col < len(row) else ""
            if shape_cell.lower().startswith("real"):
                continue  # the real-prompt set is reported on its own, not walked
            figures = _row_figures(header, row)
            if figures is None:
                continue
            conc = row[conc_col] if conc_col is not None and conc_col < len(row) else None
            family = _family(name) if depth_col is None else name.strip()
            shape = _shape(shape_cell, conc) if shape_cell else NO_SHAPE
            if tokens is None:
                unmarked.append(_Row(family, 0, shape, figures))
            else:
                rows.append(_Row(family, tokens, shape, figures))
    families_seen = {r.family for r in rows}
    rows += [r for r in unmarked if r.family in families_seen]
    if not rows:
        raise BadInput(
            "no table rows with a speculative depth and an output tok/s figure",
            "pass a Markdown table in the posts' layout (Profile | Shape | ... | Median output tok/s ...) "
            "or `gh200 smoke --json`'s markdown",
        )
    families: dict[str, dict[int, dict[str, ShapeFigures]]] = {}
    for r in rows:
        shapes = families.setdefault(r.family, {}).setdefault(r.tokens, {})
        if r.shape in shapes:
            raise BadInput(
                f"two rows for {r.family or 'the table'} MTP-{r.tokens} at {r.shape}",
                "keep one row per depth and shape",
            )
        shapes[r.shape] = r.figures
    return {
        family: [Depth(tokens, shapes) for tokens, shapes in sorted(depths.items())]
        for family, depths in families.items()
    }
