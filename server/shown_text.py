"""Which characters break or reverse how a text is shown: what a new request's free texts may not hold
(server/convert.py check_shown_text), and what the CLI's tables escape in every text the server answers
(server/admin/output.py, `shown_escaped`: those characters and the backslash). Only `re`: the command line imports
it too."""

from __future__ import annotations

import re

# Free texts a person reads -------------------------------------------------------------------------------------
# A name, note or attribute entry a request stores is shown as it is: on invoices, in the audit log, in the CLI's
# tables. A control character (C0, DEL, C1) there breaks a table's rows or drives the terminal (ESC, CSI), a line
# break (LF, CR, NEL, U+2028/U+2029) splits one row in two, and a bidirectional control shows the text reversed
# ("Trojan Source": a name reading "Acme" in one table and something else in the next). So a new request's free
# texts hold none, as an actor's name holds none (server/auth.py is_actor_name). Any other character is taken:
# letters of every script (Arabic and Hebrew included: they show right to left without any control), accents,
# emoji and the zero-width joiner they are built with. Checked where the request enters, not in the engine: records
# journaled before the check replay as they were made. Ids have their own grammar (engine/control.py check_id).
# Texts the server never checks for them (usage events' dimension values and transaction ids, reservation and
# request ids) and records journaled before the check still hold them: the CLI shows them escaped (`escaped`).

# Right-to-left and left-to-right marks, embeddings, overrides and isolates (Unicode's Bidi_Control property).
BIDI_CONTROLS = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
LINE_BREAKS = frozenset("\n\r\x0b\x0c\x85\u2028\u2029")
OUT_OF_A_LINE = f"\x00-\x1f\x7f-\x9f\u2028\u2029{BIDI_CONTROLS}"  # controls, line breaks and bidi controls
NOT_IN_A_LINE = re.compile(f"[{OUT_OF_A_LINE}]")
# A note is written in lines: it may hold a line feed and a tab, and nothing else of those.
NOT_IN_A_NOTE = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029{BIDI_CONTROLS}]")


def _as_python_writes(found: re.Match[str]) -> str:
    """The character found, escaped as Python's unicode_escape writes it (`\\x1b`, `\\u202e`, `\\n`, `\\\\`)."""
    return found.group().encode("unicode_escape").decode()


def escaped(text: str) -> str:
    """`text` with each character NOT_IN_A_LINE matches written as Python's unicode_escape writes it (`\\x1b`,
    `\\u202e`, `\\n`): one line that drives no terminal and reads in its order. Every other character is kept, so
    accents, CJK, Arabic and Hebrew letters and emoji show as they are."""
    return NOT_IN_A_LINE.sub(_as_python_writes, text)


# What the CLI escapes: NOT_IN_A_LINE and the backslash. Left as it is, a backslash made two texts print the same: a
# name holding `\` then `n` and one holding a line feed (escaped `\n`) both printed `\n`.
NOT_SHOWN_AS_IT_IS = re.compile(f"[\\\\{OUT_OF_A_LINE}]")


def shown_escaped(text: str) -> str:
    """`text` as the CLI prints it for people: as `escaped` writes it, and each backslash doubled (`\\\\`), as Python
    writes it too, so no two texts print the same."""
    return NOT_SHOWN_AS_IT_IS.sub(_as_python_writes, text)
