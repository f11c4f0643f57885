"""Outputs a creator opens in a spreadsheet (`vrp.sheets`): xlsx text cells are string cells, never formulas or
error values; CSV text cells that a spreadsheet would run as a formula are protected (OWASP "CSV Injection"), with
`escape_formulas=False` / `vrp generate --no-escape-formulas` for programs."""
from __future__ import annotations

import csv

import openpyxl
import pandas as pd
import pytest

from vrp.cli import build_parser
from vrp.generate.run import write_predictions

TRIGGERS = ["=5 tips for sourdough", '=HYPERLINK("http://evil.example","click")', "+1 great video", "-5 stars",
            "@channel love it", "\tindented", "\rcarriage"]


def rows(texts: list[str]) -> list[dict]:
    return [{"video_id": f"v{i}", "title": "=5 tips for sourdough", "comment": t, "logprob": -2.5, "finished": True}
            for i, t in enumerate(texts)]


def test_xlsx_text_that_starts_with_equals_is_a_string_cell(tmp_path):
    write_predictions(rows(TRIGGERS[:2]), tmp_path / "p.xlsx")
    ws = openpyxl.load_workbook(tmp_path / "p.xlsx").active
    cells = {c.value: c.data_type for row in ws.iter_rows(min_row=2) for c in row}
    for text in ["=5 tips for sourdough", TRIGGERS[1]]:
        assert cells[text] == "s", (text, cells[text])  # not "f" (formula)
    assert cells[-2.5] == "n"  # numbers stay numbers


@pytest.mark.parametrize("text", ["#N/A", "#REF!", "#DIV/0!"])
def test_xlsx_text_that_is_an_excel_error_code_is_a_string_cell(tmp_path, text):
    # openpyxl makes a string equal to one of its ERROR_CODES an error cell ("e") unless told otherwise
    write_predictions(rows([text]), tmp_path / "e.xlsx")
    cell = openpyxl.load_workbook(tmp_path / "e.xlsx").active["C2"]
    assert (cell.value, cell.data_type) == (text, "s")


def read_csv_cells(path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_csv_cells_that_would_run_as_formulas_get_a_leading_quote(tmp_path):
    write_predictions(rows(TRIGGERS), tmp_path / "p.csv")
    table = read_csv_cells(tmp_path / "p.csv")
    assert table[0] == ["video_id", "title", "comment", "logprob", "finished"]
    assert [r[2] for r in table[1:]] == ["'" + t for t in TRIGGERS]
    assert {r[1] for r in table[1:]} == {"'=5 tips for sourdough"}
    assert {r[3] for r in table[1:]} == {"-2.5"}  # a number is not text: no quote, no prefix
    raw = (tmp_path / "p.csv").read_text(encoding="utf-8")
    assert '"v0","\'=5 tips for sourdough"' in raw  # every text field quoted, as OWASP recommends


def test_csv_separator_inside_a_cell_cannot_start_a_new_cell(tmp_path):
    # OWASP: a separator or quote in the text must not open a new cell that starts with a trigger
    texts = ['ok,=1+1', 'say "hi",@SUM(1)', "line one\n=2+2"]
    write_predictions(rows(texts), tmp_path / "s.csv")
    table = read_csv_cells(tmp_path / "s.csv")
    assert [r[2] for r in table[1:]] == texts and all(len(r) == 5 for r in table)


def test_csv_protection_can_be_turned_off_for_programs(tmp_path):
    write_predictions(rows(TRIGGERS), tmp_path / "raw.csv", escape_formulas=False)
    assert [r[2] for r in read_csv_cells(tmp_path / "raw.csv")[1:]] == TRIGGERS
    assert build_parser().parse_args(["generate", "--out", "x.csv", "--no-escape-formulas"]).escape_formulas is False
    assert build_parser().parse_args(["generate", "--out", "x.csv"]).escape_formulas is True


def test_jsonl_output_keeps_the_text_as_generated(tmp_path):
    import json

    write_predictions(rows(TRIGGERS), tmp_path / "p.jsonl")
    lines = (tmp_path / "p.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["comment"] for x in lines] == TRIGGERS


def test_write_predictions_xlsx_with_control_characters(tmp_path) -> None:
    from vrp.generate.run import write_predictions

    write_predictions([{"video_id": "a", "title": "t\x01", "comment": "bell\x07 \x1b[31mred"}], tmp_path / "p.xlsx")
    df = pd.read_excel(tmp_path / "p.xlsx")
    assert df["comment"].tolist() == ["bell [31mred"] and df["title"].tolist() == ["t"]
