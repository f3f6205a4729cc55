"""Remote output made safe for a terminal: control characters are shown, not obeyed.

A node's output can hold escape sequences that set the window title, clear the screen, move
the cursor or hide text (`ESC ] 0;...BEL`, `ESC [2J`, a bare CR that overwrites a line,
bidi overrides that reorder it). On the terminal they are shown escaped (`\\x1b[2J`); the
output log keeps the raw bytes.
"""

from __future__ import annotations

import re

# C0 controls except TAB and LF, DEL, C1 controls, and the bidi embedding/override/isolate marks.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _show(m: re.Match) -> str:
    c = m.group(0)
    if c == "\r":
        return "\\r"
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def for_terminal(text: str) -> str:
    """`text` with every control character shown as an escape (CRLF line ends become LF)."""
    return _UNSAFE.sub(_show, text.replace("\r\n", "\n"))
