"""docs/capabilities.md says what the capability table does: one row per field, each cell
as ``upstream.params.CAPABILITIES`` has it."""

from __future__ import annotations

import re

from llm_service.settings import ModelServer
from llm_service.upstream.params import CAPABILITIES, FIELDS, SEED_KNOBS, Translation
from tests.support import ROOT

COLUMNS = (ModelServer.VLLM, ModelServer.RAY, ModelServer.TGI, ModelServer.LLAMACPP,
           ModelServer.OPENAI)  # fmt: skip
ROW = re.compile(r"^\| `(\w+)`(?: †)? \|(.*)\|$")


def rows() -> dict[str, list[str]]:
    text = (ROOT / "docs" / "capabilities.md").read_text()
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        match = ROW.match(line)
        if match and match.group(1) in FIELDS:
            out[match.group(1)] = [cell.strip() for cell in match.group(2).split("|")]
    return out


def test_every_field_has_a_row() -> None:
    assert sorted(FIELDS - set(rows())) == []


def test_every_cell_says_what_the_table_does() -> None:
    for field, cells in rows().items():
        assert len(cells) == len(COLUMNS), field
        for server, cell in zip(COLUMNS, cells, strict=True):
            way = CAPABILITIES[server].get(field)
            if way is None and field in SEED_KNOBS:
                assert cell == "left out", (field, server, cell)
            elif way is None:
                assert cell == "422", (field, server, cell)
            elif isinstance(way, Translation):
                assert cell.startswith("translated"), (field, server, cell)
            elif way == field:
                assert cell.startswith("✓"), (field, server, cell)
            else:
                assert cell == f"as `{way}`", (field, server, cell)
