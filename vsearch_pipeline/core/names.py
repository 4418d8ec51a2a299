"""How file names that are not valid text are recorded, read back and shown.

A local file name is bytes. Python gives a name that is not valid UTF-8 as a str in which each
undecodable byte is a lone surrogate (U+DC80 to U+DCFF, PEP 383), and such a str cannot be
written as UTF-8: not to Parquet, JSON text, DuckDB or a Dagster log line. So a name is recorded
in one way, lossless and reversible, before it goes anywhere:

- a name that is valid text (every S3 key, almost every local name) is recorded as it is, as
  earlier versions recorded it;
- in a name that is not, each undecodable byte is written `%XX` (two upper-case hex digits) and
  each `%` as `%25`, so `urllib.parse.unquote_to_bytes` gives back the exact bytes. The `uri` of
  such a file is `file://` followed by its escaped absolute path: a recorded local URI is
  otherwise a plain absolute path, so it can never equal the URI of another file, and
  `read_object` opens exactly the original file. The `path` is the escaped relative path.

Names are recorded with their control characters (a newline, a tab) as they are, since those
are valid text; `shown` escapes them wherever a name is shown to a person (log lines, Markdown).
"""

from __future__ import annotations

import os
import re
import unicodedata
from urllib.parse import unquote_to_bytes

ESCAPED_URI_PREFIX = "file://"
_ANY_SURROGATE = re.compile("[\ud800-\udfff]")


def is_text(name: str) -> bool:
    """Whether `name` can be written as UTF-8 as it is (it holds no lone surrogate)."""
    return _ANY_SURROGATE.search(name) is None


def escaped(name: str) -> str:
    """`name` with each undecodable byte as `%XX` and each `%` as `%25` (see the module)."""
    if is_text(name):
        raise ValueError("only a name that is not valid text is escaped")
    return "".join(_escaped_piece(piece) for piece in _utf8_pieces(os.fsencode(name)))


def _utf8_pieces(raw: bytes) -> list[bytes | int]:
    """`raw` split into runs of valid UTF-8 (bytes) and single undecodable bytes (int)."""
    pieces: list[bytes | int] = []
    while raw:
        try:
            raw.decode("utf-8")
            pieces.append(raw)
            break
        except UnicodeDecodeError as err:
            if err.start:
                pieces.append(raw[:err.start])
            pieces.append(raw[err.start])
            raw = raw[err.start + 1:]
    return pieces


def _escaped_piece(piece: bytes | int) -> str:
    if isinstance(piece, int):
        return f"%{piece:02X}"
    return piece.decode("utf-8").replace("%", "%25")


def unescaped(recorded: str) -> str:
    """The name, as the filesystem gives it to Python, of an escaped recorded name."""
    return os.fsdecode(unquote_to_bytes(recorded))


def recorded_uri(uri: str) -> str:
    """The URI as recorded: itself when valid text, else `file://` and the escaped path."""
    return uri if is_text(uri) else ESCAPED_URI_PREFIX + escaped(uri)


def recorded_path(path: str) -> str:
    """A relative path as recorded: itself when valid text, else escaped."""
    return path if is_text(path) else escaped(path)


def opened_uri(uri: str) -> str:
    """What to open for a recorded URI: the exact original name of an escaped one."""
    if uri.startswith(ESCAPED_URI_PREFIX):
        return unescaped(uri[len(ESCAPED_URI_PREFIX):])
    return uri


def shown(text: str) -> str:
    """`text` safe to show on one line: control and format characters (a newline, a tab, an
    escape, a bidirectional override) and lone surrogates as Python escapes (`\\n`, `\\x1b`,
    `\\u202e`, `\\udcff`); everything else, any script or emoji, as it is."""
    return "".join(_shown_char(c) for c in text)


def _shown_char(char: str) -> str:
    if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
        return repr(char)[1:-1]
    return char


def text_safe(text: str) -> str:
    """`text` (a message that may quote a name) with any lone surrogate written `\\udcXX`, so
    that it can be stored; valid text comes back unchanged."""
    return _ANY_SURROGATE.sub(lambda m: repr(m.group())[1:-1], text)
