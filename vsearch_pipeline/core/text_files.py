"""Reading the text files people edit by hand: the API keys file, vsearch.yaml, grounding set
CSVs and URL lists for `vsearch download`.

Editors save what they like: a UTF-8 byte-order mark (Notepad), Latin-1 or UTF-16 text, a stray
binary byte pasted in. All four files are read here, so each says the same thing about it: a BOM
is dropped (the file is plainly meant as UTF-8), and a line that is not UTF-8 is named by file
and line number, rather than surfacing as a UnicodeDecodeError traceback far from its cause.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class TextFileError(ValueError):
    """A line of a hand-edited file that cannot be read: `source, line N: problem`.

    `raw` is the line's bytes, for a caller that records the line (never logs it: a keys file
    line may hold a key pasted by mistake)."""

    def __init__(self, source: str, line: int, problem: str, raw: bytes = b"") -> None:
        super().__init__(f"{source}, line {line}: {problem}")
        self.source, self.line, self.problem, self.raw = source, line, problem, raw


def numbered_lines(data: bytes | str, source: str,
                   on_error: Callable[[TextFileError], None] | None = None
                   ) -> Iterator[tuple[int, str]]:
    """(line number from 1, text without its line ending) for each line of UTF-8 `data`, a
    leading BOM dropped. Lines end at \\n, \\r\\n or \\r, as an editor counts them.

    A line that is not UTF-8 raises :class:`TextFileError` naming `source` and the line; with
    `on_error` it is handed to that instead and skipped, and the other lines still come. Text
    read with ``errors="surrogateescape"`` is checked the same way as the bytes it came from.
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    report = on_error or _raise
    if data.startswith(UTF16_BOMS):
        report(TextFileError(source, 1, "UTF-16 text, not UTF-8: save the file as UTF-8", data))
        return
    for number, raw in enumerate(data.removeprefix(UTF8_BOM).splitlines(), start=1):
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as err:
            report(TextFileError(source, number, f"not UTF-8 text (byte {raw[err.start]:#04x} at "
                                                 f"position {err.start + 1} of the line): save "
                                                 "the file as UTF-8", raw))


def read_text(data: bytes | str, source: str) -> str:
    """The whole of a hand-edited file as text, one \\n per line; a TextFileError for the first
    line that is not UTF-8."""
    return "".join(f"{text}\n" for _, text in numbered_lines(data, source))


def _raise(error: TextFileError) -> None:
    raise error
