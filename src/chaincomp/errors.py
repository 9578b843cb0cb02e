"""Errors a user can fix. The command line turns them into one line on stderr and exit status 2.

Messages quote user input (a recipe value, a file name, a key), so any text that goes into an error
line passes through `clean`/`one_line` first: a recipe must not be able to ring the bell, move the
cursor, recolour or clear the terminal, or forge a second line. `UserError` does this itself, so
`str(UserError(...))` is always one clean line whoever prints it.
"""
from __future__ import annotations

import re

# ESC-introduced sequences (ECMA-48): CSI `ESC [ params final`, OSC/DCS/SOS/PM/APC strings up to
# BEL or ST, and two-character escapes; then the 8-bit forms (C1 CSI U+009B, OSC U+009D ...).
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?"                     # CSI
    r"|\x1b[\]PX^_][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"   # OSC, DCS, SOS, PM, APC ... BEL or ST
    r"|\x1b[ -/]*[0-~]?"                            # other escapes (ESC c, ESC ( B, a lone ESC)
    r"|\x9b[0-?]*[ -/]*[@-~]?"                      # 8-bit CSI
    r"|[\x90\x98\x9d\x9e\x9f][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"   # 8-bit DCS/SOS/OSC/PM/APC
)
# What is left to remove: C0 except whitespace, DEL, C1, and the Unicode format characters that
# reorder or hide text (bidi embeddings/overrides/isolates, zero-width joiners, BOM).
_CONTROLS = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
_SURROGATES = re.compile("[\ud800-\udfff]")

MAX_LINE = 4000   # an error line quoting a whole file is no help; the end is cut and marked


def clean(text: object) -> str:
    """`text` (anything, via str) with terminal escape sequences and control characters removed:
    ANSI/ECMA-48 escapes (CSI, OSC, ...; 7- and 8-bit), C0 but tab/newline/CR/FF/VT, DEL, C1, bidi
    and zero-width format characters; lone surrogates (undecodable file names) become \\udcXX.
    Whitespace is kept: `one_line` folds it."""
    s = str(text)
    s = _ESCAPES.sub("", s)
    s = _CONTROLS.sub("", s)
    return _SURROGATES.sub(lambda m: f"\\u{ord(m.group()):04x}", s)


def one_line(text: object, limit: int = MAX_LINE) -> str:
    """`clean(text)` on one line: every run of whitespace (newlines, Unicode line separators) is one
    space, and a line over `limit` characters is cut with '...'. What the CLI prints for an error."""
    s = " ".join(clean(text).split())
    return s if len(s) <= limit else s[: max(limit - 3, 0)] + "..."


class UserError(Exception):
    """A mistake in the user's input (recipe, path, file): message names the field or file and the fix.

    Its text is always `one_line`: the message may quote hostile input."""

    def __str__(self) -> str:
        return one_line(super().__str__())


class NonFiniteError(UserError):
    """Weights (or numbers) with NaN or infinity, refused when loaded and before they are written, so
    nothing non-finite is ever checkpointed. A UserError (exit 2): the cause is the input (weights
    file, recipe settings), and the message names the file and the tensor."""

    def __init__(self, message: str, path: str = "", tensor: str = ""):
        super().__init__(message)
        self.path, self.tensor = path, tensor


class DivergenceError(RuntimeError):
    """Training produced NaN/Inf; raised after the last good weights were restored."""

    def __init__(self, stage: str, step: int, value: float):
        super().__init__(f"stage '{stage}' diverged at step {step} (loss={value}); last good weights restored")
        self.stage, self.step, self.value = stage, step, value
