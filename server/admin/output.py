"""How client commands print: rich tables for people, JSON for scripts, and the parsing of `key=value` arguments.

What people read shows every text the server answered on one line and in its order: a control character, line
break or bidirectional control in it (server/shown_text.py; a usage event's dimension value or transaction id is
never checked for them, and records journaled before the server checked names and notes may hold them) is written
escaped, as Python writes it (`\\x1b`, `\\u202e`, `\\n`), in every table cell, header and title and every line
printed; so an ESC sequence drives no terminal, a U+202E reverses nothing and a CR/LF splits no row. A backslash is
written as Python writes it too (`\\\\`), so a text holding `\\` and `n` never prints as one holding a line feed.
Texts are rich's plain text, never its markup (`literal`): `[red]` or `:smile:` in a name prints as written. JSON
carries the texts exactly (it escapes controls itself).

JSON is protobuf's JSON mapping with the proto field names (`customer_id`), empty scalars, lists and maps
included (unset message fields, such as a time, left out); decimal amounts stay strings and 64-bit integers
are strings, as that mapping has them. rich and
protobuf are imported when something is printed, not when the command line is parsed.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import click

from server.shown_text import shown_escaped

if TYPE_CHECKING:
    from google.protobuf.message import Message
    from google.protobuf.timestamp_pb2 import Timestamp
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

Cell = str | int | float | None

# The wire's integer ranges: past them protobuf raises ValueError while the request is built, so a command checks
# them as it parses its arguments (a usage error, exit 2) instead.
UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
VERSION_NUMBER = click.IntRange(1, UINT32_MAX)  # a rate card version (uint32)
JOURNAL_SEQ = click.IntRange(0, UINT64_MAX)  # an --after seq of the audit log or the alerts (uint64)


def message_dict(message: Message) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def print_json(value: Any) -> None:
    """`value`: a protobuf message, or plain JSON data (which may hold messages one level down)."""
    from google.protobuf.message import Message

    def plain(item: Any) -> Any:
        if isinstance(item, Message):
            return message_dict(item)
        if isinstance(item, list):
            return [plain(x) for x in item]
        if isinstance(item, dict):
            return {k: plain(v) for k, v in item.items()}
        return item

    click.echo(json.dumps(plain(value), indent=2))


# The exit status of a command whose stdout's reader went away (`tariff customers list | head -1`): 128 + SIGPIPE, what
# the shell reports for a command SIGPIPE ended (`yes | head -1`), and distinct from 1, a call that failed.
EXIT_BROKEN_PIPE = 141


def exit_on_broken_pipe() -> NoReturn:
    """Ends the command quietly once stdout's reader has gone: no traceback, nothing on stderr, status 141. stdout
    is pointed at /dev/null first, so the interpreter's last flush of what is still buffered cannot fail again (as
    Python's documentation of SIGPIPE advises)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    sys.exit(EXIT_BROKEN_PIPE)


def console() -> Console:
    from rich.console import Console

    class Quiet(Console):
        def on_broken_pipe(self) -> None:
            # rich's own exits 1, a failed call's status: the command's one handler decides instead.
            raise BrokenPipeError

    # Off a terminal (a pipe, a file, a test) nothing is cut to 80 columns: an id must come out whole.
    return Quiet(width=None if sys.stdout.isatty() else 1_000, highlight=False)


# Past this many rows a table is written line by line when rich's layout of it is known to be plain padding (see
# plain_rows_lines): rich lays out every cell of every row, about 8 s for 16,000 grants, where the lines cost little.
PLAIN_ROWS_MIN = 200
COLUMN_GAP = "   "  # between two columns of a SIMPLE_HEAD table without edge padding: pad, divider, pad


def unit_suffix(unit: str) -> str:
    """A label's unit, ` (USD)` or ` (credits)`, for amounts whose answer names none; nothing when `unit` is empty (a
    customer before its first contract, a report of no contract)."""
    return f" ({unit})" if unit else ""


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Cell]], title: str | None = None) -> None:
    """The table for people: every text escaped first (`shown_escaped`), so both ways of writing it print the same."""
    texts = [tuple("" if cell is None else shown_escaped(str(cell)) for cell in row) for row in rows]
    columns = [shown_escaped(column) for column in columns]
    title = None if title is None else shown_escaped(title)
    out = console()
    fast = plain_rows_lines(out, columns, texts, title) if len(texts) > PLAIN_ROWS_MIN else None
    if fast is not None:
        out.file.write(fast)
        out.file.flush()
        return
    table = rich_table(columns, title)
    for row in texts:
        table.add_row(*(literal(text) for text in row))
    out.print(table)


def literal(text: str) -> Text:
    """`text` for rich as it is: a server's text is data, never markup (`[red]`, a stray `[/x]` that rich refuses
    with an error) nor an emoji code (`:smile:`), which rich reads in a plain string."""
    from rich.text import Text

    return Text(text)


def rich_table(columns: Sequence[str], title: str | None) -> Table:
    from rich import box
    from rich.table import Table

    shown_title = None if title is None else literal(title)
    table = Table(title=shown_title, box=box.SIMPLE_HEAD, title_justify="left", show_edge=False, pad_edge=False)
    for column in columns:
        table.add_column(literal(column))  # Table(*columns) takes only strings (read as markup) or Columns
    return table


def plain_rows_lines(
    out: Console, columns: Sequence[str], rows: Sequence[Sequence[str]], title: str | None
) -> str | None:
    """What rich prints for the table, made without rich laying out each row; None when that cannot be sure of
    being identical: styles would be written (a terminal with colours), a cell is not plain printable ASCII (a tab, a
    wide character; markup and emoji codes are text, `literal`), or the table does not fit the console's width
    (rich would wrap cells). rich lays out the title, the header and one row of the widest width of each column:
    when that row comes out as the cells padded and joined by COLUMN_GAP, every row does, the widths being the same."""
    if out.color_system is not None or any(len(row) != len(columns) for row in rows):
        return None
    for row in (columns, *rows):
        for text in row:
            if not (text.isascii() and text.isprintable()) or text != text.strip():
                return None
    widths = [max(len(text) for text in column) for column in zip(columns, *rows, strict=True)]

    def line(row: Sequence[str]) -> str:
        return COLUMN_GAP.join(text.ljust(width) for text, width in zip(row, widths, strict=True))

    widest = ["x" * width for width in widths]
    table = rich_table(columns, title)
    table.add_row(*widest)
    with out.capture() as captured:
        out.print(table)
    *head, last = captured.get().splitlines()
    if last != line(widest):
        return None
    return "".join(f"{text}\n" for text in (*head, *(line(row) for row in rows)))


def echo_line(text: str, err: bool = False) -> None:
    """One line for people (a watched alert or balance, a failure on stderr), its texts escaped (`shown_escaped`)."""
    click.echo(shown_escaped(text), err=err)


def print_fields(fields: Sequence[tuple[str, Cell]], title: str | None = None) -> None:
    """One record as a two-column table: field, value."""
    print_table(("field", "value"), fields, title)


def when(timestamp: Timestamp, present: bool = True) -> str:
    """A Timestamp as `2026-12-01 00:00:00Z`, with its fractional seconds when it has any (`00:30:00.250Z`, as
    `--json` shows them: 3, 6 or 9 digits); empty when the field is unset (`present`: the caller's HasField).
    1970-01-01 00:00:00Z is a time like any other (a period may start then)."""
    if not present:
        return ""
    return timestamp.ToJsonString().replace("T", " ", 1)


def pairs(mapping: Mapping[str, Any]) -> str:
    """`a=1, b=2`, sorted by key: a map field in one table cell."""
    return ", ".join(f"{k}={mapping[k]}" for k in sorted(mapping))


def parse_pairs(items: Iterable[str], what: str) -> dict[str, str]:
    """`key=value` arguments as a dict; a malformed or repeated key is a usage error (exit 2)."""
    parsed: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not key=value", param_hint=what)
        if key in parsed:
            raise click.BadParameter(f"{key!r} is given twice", param_hint=what)
        parsed[key] = value
    return parsed


def decimal_problem(text: str) -> str | None:
    """Why `text` is not a decimal the server takes where a request enters (engine.money.DECIMAL_GRAMMAR: JSON's
    number, so no '+', '_', spaces, ".5" or "1,5"), or None when it is. The client holds its decimal options to it
    so that such a typo is a usage error naming the option (exit 2), sent nowhere; the range stays the server's."""
    from engine.money import GRAMMAR_TEXT, is_decimal_text

    return None if is_decimal_text(text) else f"{text!r} is not a decimal: write {GRAMMAR_TEXT}"


def decimal_option(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """A click callback for a decimal option (`--threshold 1000`): one that is not a decimal is a usage error."""
    if value is not None and (problem := decimal_problem(value)):
        raise click.BadParameter(problem)
    return value


def parse_decimals(items: Iterable[str], what: str) -> dict[str, str]:
    """`name=decimal` arguments (a draft's parameters), the decimals as written; a malformed pair, a repeated name or
    a value that is not a decimal is a usage error (exit 2)."""
    parsed = parse_pairs(items, what)
    for name, text in parsed.items():
        if problem := decimal_problem(text):
            raise click.BadParameter(f"{name}={problem}", param_hint=what)
    return parsed


def parse_numbers(items: Iterable[str], what: str) -> dict[str, float]:
    """`name=number` arguments (usage values, which the wire carries as doubles): finite, as the server takes them
    (nan, inf and 1e400, which float() reads as inf, are usage errors here, not calls the server refuses)."""
    numbers: dict[str, float] = {}
    for key, value in parse_pairs(items, what).items():
        try:
            number = float(value)
        except ValueError:
            raise click.BadParameter(f"{key}={value!r}: the value is not a number", param_hint=what) from None
        if not math.isfinite(number):
            raise click.BadParameter(f"{key}={value!r}: the value is not a finite number", param_hint=what)
        numbers[key] = number
    return numbers


def left_out_note(left_out: int) -> str:
    """What a grants table's title adds when the balance left spent grants out (balance.proto Balance.grants)."""
    return f", {left_out:,} spent grants starting earliest left out (too many for one message)" if left_out else ""
