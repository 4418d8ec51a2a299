"""One line for a home or artifact storage that cannot be written: read-only, not ours, full.

The failure can surface as an OSError (our own writes, with the path), as DuckDB's IOException
(the path in its text) or as SQLAlchemy's OperationalError from the Dagster instance's SQLite
files (no path in it: the instance folder is named instead)."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator

REASONS = {
    errno.EROFS: "read-only file system",
    errno.EACCES: "no permission",
    errno.EPERM: "no permission",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
}
# what the libraries that write for us say, for each reason
MESSAGES = {
    "Read-only file system": "read-only file system",
    "Permission denied": "no permission",
    "No space left on device": "no space left on device",
    "attempt to write a readonly database": "read-only file system or no permission",
    "unable to open database file": "read-only file system or no permission",
    "database or disk is full": "no space left on device",
}
FULL = ("no space left on device", "disk quota exceeded")


def describe_storage_error(err: BaseException) -> str | None:
    """The one line for `err` when it (or what caused it) is a storage that cannot be written;
    None for any other error."""
    for cause in _chain(err):
        if isinstance(cause, OSError) and cause.errno in REASONS:
            return _line(cause.filename, REASONS[cause.errno])
        for text, reason in MESSAGES.items():
            if text in str(cause):
                path = _quoted_path(str(cause), text) or os.environ.get("DAGSTER_HOME")
                return _line(path, reason)
    return None


def _line(path: object, reason: str) -> str:
    where = f"{path}" if path else "the home"
    if reason in FULL:
        return (f"cannot write to {where} ({reason}): free some space there and run the same "
                "command again (what was stored before is intact)")
    return (f"cannot write to {where} ({reason}): vsearch needs to write to its home and "
            "artifact storage (--home, VSEARCH_HOME, storage.root)")


def _quoted_path(text: str, reason: str) -> str | None:
    """The quoted absolute path on the line that gives the reason (a Dagster error that wraps
    the step's error carries its stack trace too, full of other paths)."""
    line = next(line for line in text.splitlines() if reason in line)
    found = re.search(r"""["'](/[^"']+)["']""", line)
    return found.group(1) if found else None


def _chain(err: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__
