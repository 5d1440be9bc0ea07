"""The CLI's time column (server/admin/output.py when): unset fields print empty, every set time prints, the
epoch too, with its fractional seconds when it has any; tables written line by line past a row count print exactly
what rich's layout prints; texts are shown escaped where they would break a line, drive the terminal or reverse."""

from __future__ import annotations

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from server.admin import output
from server.admin.output import Cell, echo_line, when
from server.shown_text import escaped, shown_escaped


def test_a_period_starting_at_the_epoch_prints_its_time_not_a_blank() -> None:
    assert when(Timestamp(seconds=0, nanos=0)) == "1970-01-01 00:00:00Z"


def test_an_unset_field_prints_empty_and_a_set_one_its_utc_time() -> None:
    assert when(Timestamp(), present=False) == ""
    assert when(Timestamp(seconds=1_796_083_200)) == "2026-12-01 00:00:00Z"


def test_fractional_seconds_print_when_there_are_any_as_json_shows_them() -> None:
    assert when(Timestamp(seconds=1_764_549_000)) == "2025-12-01 00:30:00Z"
    assert when(Timestamp(seconds=1_764_549_000, nanos=250_000_000)) == "2025-12-01 00:30:00.250Z"
    assert when(Timestamp(seconds=1_764_549_000, nanos=1_000)) == "2025-12-01 00:30:00.000001Z"
    assert when(Timestamp(seconds=0, nanos=1)) == "1970-01-01 00:00:00.000000001Z"


# Large tables (server/admin/output.py print_table): past PLAIN_ROWS_MIN rows they are written line by line, which
# must print exactly what rich's layout prints.

GRANT_COLUMNS = ("grant", "kind", "amount", "drawn", "remaining", "held", "expired", "revenue", "starts", "expires")


def grant_rows(count: int) -> list[tuple[Cell, ...]]:
    """Rows as `tariff grants` prints them: ids and amounts of varying widths, times with spaces, empty cells."""
    return [
        (
            f"topup:{n}" if n % 3 else f"g-{n}",
            "TOP_UP" if n % 3 else "PROMOTIONAL",
            str(n * 12345 % 100_003),
            "0",
            f"{n}.5" if n % 2 else None,
            "",
            "0",
            str(n),
            "2026-12-01 00:00:00Z",
            "" if n % 5 else "2027-01-01 00:00:00.250Z",
        )
        for n in range(count)
    ]


def printed(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    rows_min: int,
    rows: list[tuple[Cell, ...]],
    columns: tuple[str, ...] = GRANT_COLUMNS,
    title: str | None = "grants of c1 (credits)",
) -> str:
    monkeypatch.setattr(output, "PLAIN_ROWS_MIN", rows_min)
    output.print_table(columns, rows, title=title)
    return capsys.readouterr().out


@pytest.fixture(autouse=True)
def no_forced_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("count", [0, 1, 3, 250, 3_000])
def test_a_table_written_line_by_line_is_what_rich_prints(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    """The same grant rows, 0 to 3,000, printed by rich's layout (no row count reaches the threshold) and line by
    line (every count does): the same text, character for character; and the line by line path was taken."""
    rows = grant_rows(count)
    texts = [tuple("" if cell is None else str(cell) for cell in row) for row in rows]
    assert output.plain_rows_lines(output.console(), GRANT_COLUMNS, texts, "grants of c1 (credits)") is not None
    by_rich = printed(capsys, monkeypatch, 10**9, rows)
    assert printed(capsys, monkeypatch, -1, rows) == by_rich
    assert len(by_rich.splitlines()) == 3 + count  # title, header, rule, rows


@pytest.mark.parametrize("cell", ["naïve", "wide 表", "tab\there", " padded ", "x" * 2_000])
def test_a_table_rich_would_render_otherwise_is_left_to_rich(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, cell: str
) -> None:
    """Cells of non-ASCII or wide characters, tabs, edge spaces, or a table wider than the console (rich wraps it):
    the line by line path declines and the output is rich's, as before."""
    rows = [*grant_rows(5), ("g-x", "PROMOTIONAL", cell, "0", "0", "0", "0", "0", "", "")]
    texts = [tuple("" if c is None else str(c) for c in row) for row in rows]
    assert output.plain_rows_lines(output.console(), GRANT_COLUMNS, texts, "t") is None
    assert printed(capsys, monkeypatch, -1, rows) == printed(capsys, monkeypatch, 10**9, rows)


@pytest.mark.parametrize("cell", ["[bold]x[/bold]", "a :smile: b", "[/nothing]", "[link=http://e]y"])
def test_markup_and_emoji_codes_in_a_cell_print_as_written_either_way(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, cell: str
) -> None:
    """A server's text is data: what rich would read as markup or an emoji code prints as it is, in the cell, a
    header and the title, by rich's layout and line by line alike (a stray closing tag made rich raise)."""
    rows = [*grant_rows(5), ("g-x", "PROMOTIONAL", cell, "0", "0", "0", "0", "0", "", "")]
    columns = (cell, *GRANT_COLUMNS[1:])
    by_rich = printed(capsys, monkeypatch, 10**9, rows, columns=columns, title=cell)
    assert printed(capsys, monkeypatch, -1, rows, columns=columns, title=cell) == by_rich
    title, header, _, *lines = by_rich.splitlines()
    assert (title.strip(), header.split()[0], lines[-1].split()[2]) == (cell, cell.split()[0], cell.split()[0])
    assert cell in lines[-1]


def test_a_long_title_wraps_as_rich_wraps_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A title wider than the table is wrapped by rich over the table's width, whichever path writes the rows."""
    rows = grant_rows(40)
    title = "grants of " + "a-very-long-customer-id " * 20
    assert printed(capsys, monkeypatch, -1, rows, title=title) == printed(capsys, monkeypatch, 10**9, rows, title=title)
    assert printed(capsys, monkeypatch, -1, rows, title=None) == printed(capsys, monkeypatch, 10**9, rows, title=None)


# Texts shown escaped (server/shown_text.py shown_escaped, applied by print_table and echo_line; escaped without the
# backslash, for the server's field paths).


def test_controls_line_breaks_and_bidi_controls_are_escaped_as_python_writes_them() -> None:
    text = "a\x1b[31mb\u202ec\r\nd\te\x00\x7f\x85\x9b\u2028\u2029\u061c\u200e\u200f\u202a\u2066\u2069"
    shown = "a\\x1b[31mb\\u202ec\\r\\nd\\te\\x00\\x7f\\x85\\x9b\\u2028\\u2029\\u061c\\u200e\\u200f\\u202a\\u2066\\u2069"
    assert escaped(text) == shown
    assert escaped(text) == repr(text)[1:-1]


@pytest.mark.parametrize(
    "text",
    ["Zürich", "naïve café", "東京 株式会社", "مرحبا", "שלום", "👍🏽", "👨\u200d👩\u200d👧", "a\\nb", "[bold]x", ""],
)
def test_ordinary_text_is_shown_as_it_is(text: str) -> None:
    """Accents, CJK, right-to-left letters (no control needed), emoji with the zero-width joiner, a backslash."""
    assert escaped(text) == text


@pytest.mark.parametrize("count", [3, 250])
def test_a_table_shows_every_cell_header_and_title_escaped_on_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    """Hostile texts in cells, a column and the title: each row one line, no raw character, and the same text
    whichever path writes the rows (line by line is taken: the escaped texts are printable ASCII)."""
    columns = ("transaction \u202e", "region")
    rows: list[tuple[Cell, ...]] = [(f"t-\x1b[2J\u2066\n{n}", "\x1b[31mred\r\nx") for n in range(count)]
    escaped_rows = [tuple(escaped(str(cell)) for cell in row) for row in rows]
    assert output.plain_rows_lines(output.console(), [escaped(c) for c in columns], escaped_rows, "t") is not None
    by_rich = printed(capsys, monkeypatch, 10**9, rows, columns, title="lines of c\x1b[0m")
    assert printed(capsys, monkeypatch, -1, rows, columns, title="lines of c\x1b[0m") == by_rich
    lines = by_rich.splitlines()
    assert len(lines) == 3 + count  # title, header, rule, rows
    assert lines[0].strip() == "lines of c\\x1b[0m"
    assert lines[1].split() == ["transaction", "\\u202e", "region"]
    assert lines[3].split() == ["t-\\x1b[2J\\u2066\\n0", "\\x1b[31mred\\r\\nx"]
    assert not any(char in by_rich for char in "\x1b\u202e\u2066\r")


def test_the_cli_doubles_a_backslash_so_no_two_texts_print_the_same() -> None:
    """A backslash then `n` and a line feed printed alike (`\\n`); the CLI writes a backslash as Python does."""
    for text in ("a\\nb", "a\nb", "\\x1b", "\x1b", "C:\\dir\\", "\\u202e\u202e"):
        assert shown_escaped(text) == repr(text)[1:-1]
    assert shown_escaped("a\\nb") != shown_escaped("a\nb")
    assert escaped("a\\nb") == "a\\nb"  # the server's own (field paths) keeps it: its messages are unchanged


def test_a_line_printed_for_people_is_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    echo_line("alert \x1b[2J\u202enote\r\nnext", err=True)
    assert capsys.readouterr().err == "alert \\x1b[2J\\u202enote\\r\\nnext\n"
