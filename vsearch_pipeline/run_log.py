"""What a run started from the command line shows and keeps: Dagster's event log goes whole to
the home's log file (as it goes to the instance), and the terminal sees one progress bar per long
step (a plain line when stderr is not a terminal), warnings and failures, and nothing else.

Dagster's console logger printed every progress message with a 90-character prefix of time,
job, run id and step; here a Dagster logger replaces it for the runs `run_pipeline` makes. The
steps report progress through `context.log.info("<what>: <done>/<total> (...)")`
(vsearch_pipeline.assets.common.progress_logger), which this reads back.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from dagster import DagsterEventType, LoggerDefinition, logger

from vsearch_pipeline.core.layout import HomeLayout

LOGGER_KEY = "vsearch"
RUN_CONFIG = {"loggers": {LOGGER_KEY: {}}}
PROGRESS = re.compile(r"^(?P<what>.+): (?P<done>\d+)/(?P<total>\d+) \(")
FILES_STEPS = ("manifest",)  # the steps whose progress counts files (not all of them are images)
PAIRS_STEPS = ("partial-copy checks",)  # the steps whose progress counts pairs of images
LOG_FORMAT = "%(asctime)s - %(levelname)s - %(message)s"


class Progress(logging.Handler):
    """The terminal's view of a run's Dagster log: a tqdm bar per step that reports progress
    (or, when `bars` is false, a `say` line when it is under way, 'embeddings b00001: 102 images
    ...', and one when it is done, '... 12.3 s'), and each warning or failure as one line.
    Everything else stays in the log file."""

    def __init__(self, say: Callable[[str], None], bars: bool, log_file: Path) -> None:
        super().__init__(logging.DEBUG)
        self.say, self.bars, self.log_file = say, bars, log_file
        self.partition = ""  # the batch the current run processes ('' for the collection)
        self.announce = ""  # said when the current run has started (it is in the instance then)
        self._started: dict[str, float] = {}  # step key -> when it started
        self._bars: dict[str, object] = {}  # progress 'what' -> its open tqdm bar
        self._said: set[str] = set()  # without bars: the steps whose first line was said

    def emit(self, record: logging.LogRecord) -> None:
        meta = getattr(record, "dagster_meta", None) or {}
        event, step = meta.get("dagster_event"), meta.get("step_key") or ""
        message = str(meta.get("orig_message", record.getMessage()))
        if event is not None and event.event_type == DagsterEventType.RUN_START and self.announce:
            self.say(self.announce)
        elif event is not None and event.event_type == DagsterEventType.STEP_START:
            self._started[step] = time.time()  # the clock tqdm reads
        elif event is not None and event.event_type == DagsterEventType.STEP_FAILURE:
            self.close()
            self.say(f"{step} failed: {_error_line(event)} (the whole log: {self.log_file})")
        elif event is None and record.levelno >= logging.WARNING:
            self.close()
            self.say(f"{step or 'run'}: {message.splitlines()[0] if message else ''}")
        elif event is None and (found := PROGRESS.match(message)):
            self._progress(step, found["what"], int(found["done"]), int(found["total"]))

    def _progress(self, step: str, what: str, done: int, total: int) -> None:
        label = f"{what} {self.partition}".strip()
        unit = "files" if what in FILES_STEPS else "pairs" if what in PAIRS_STEPS else "images"
        started = self._started.get(step, time.time())
        if self.bars:
            if what not in self._bars:
                self._bars[what] = _bar(label, total, unit[:-1], started)
            self._bars[what].update(done - self._bars[what].n)
        elif done < total and what not in self._said:  # under way: a log shows what runs now
            self._said.add(what)
            self.say(f"{label}: {total} {unit} ...")
        if done >= total:
            self._said.discard(what)
            if self.bars:
                self._bars.pop(what).close()
            else:
                self.say(f"{label}: {total} {unit} ... {time.time() - started:.1f} s")

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()
        super().close()


def _bar(label: str, total: int, unit: str, started: float):
    """A tqdm bar timed from the step's start (the first progress message comes a tenth in)."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=label, unit=unit, file=sys.stderr, dynamic_ncols=True)
    bar.start_t = bar.last_print_t = started
    return bar


def _error_line(event) -> str:
    """The first line of what went wrong: the innermost cause (a step that ran out of retries
    says 'Exceeded max_retries of 3'; the reason is the error it was retried for)."""
    error = getattr(event.event_specific_data, "error", None)
    while error is not None and getattr(error, "cause", None) is not None:
        error = error.cause
    text = ((error.message if error is not None else event.message) or "").strip()
    kind, _, rest = text.partition(": ")
    if error is not None and error.cls_name and kind.endswith(error.cls_name) and rest:
        text = rest  # 'vsearch_pipeline.core.text_files.TextFileError: ...': the reason alone
    return text.splitlines()[0] if text else "no reason given"


def log_file_handler(home: Path) -> logging.Handler:
    """The home's Dagster log file (appended to; every event, DEBUG and up)."""
    path = HomeLayout(home).dagster_log
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    return handler


def run_logger(handlers: list[logging.Handler]) -> LoggerDefinition:
    """A Dagster logger that hands every record of a run to `handlers`."""

    @logger(description="vsearch: the home's log file and the terminal's progress")
    def vsearch_log(_init_context) -> logging.Logger:
        log = logging.Logger("vsearch.dagster", logging.DEBUG)  # not registered: none piles up
        for handler in handlers:
            log.addHandler(handler)
        return log

    return vsearch_log
