"""Logs for people and for journald: one line per event, ``key=value`` context, on stdout.

Every line names a stable event and its context::

    2024-05-01T12:00:00.123+02:00 WARNING package.mirror_failed mirror=https://m1 error="timed out"

Under systemd, stdout is a stream connected to the journal and systemd says so in
``$JOURNAL_STREAM`` (``DEVICE:INODE`` of that stream). Then each line starts with its
syslog priority instead (``<4>package.mirror_failed ...``) and carries no timestamp, since
the journal keeps its own; journald reads the prefix, so ``journalctl -p warning`` works.
A traceback gets the prefix on each of its lines, so it stays at its record's priority.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from typing import TextIO

from tentacle.errors import ConfigError

__all__ = ["event", "format_fields", "setup_logging", "stdout_is_journal"]

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# syslog(3) priorities: 2 crit, 3 err, 4 warning, 6 info, 7 debug.
_PRIORITIES = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def setup_logging(level: str = "info") -> None:
    """Send every log record to stdout, one line per event; safe to call again."""
    try:
        threshold = LEVELS[level.lower()]
    except KeyError:
        names = ", ".join(LEVELS)
        raise ConfigError(f"log level: {level!r} is not one of {names}") from None
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StdoutHandler)]:
        root.removeHandler(handler)
    handler = _StdoutHandler(sys.stdout)
    handler.setFormatter(LineFormatter(journal=stdout_is_journal()))
    root.addHandler(handler)
    root.setLevel(threshold)


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: object) -> None:
    """Log the event ``name`` with ``key=value`` fields, e.g. ``step.failed step=Migrate``."""
    if logger.isEnabledFor(level):
        text = f"{name} {format_fields(**fields)}" if fields else name
        # stacklevel=2: the record points at the caller, not at this helper.
        logger.log(level, "%s", text, stacklevel=2)


def format_fields(**fields: object) -> str:
    """Render fields as ``key=value`` pairs, quoting values a reader could not split."""
    return " ".join(f"{key}={_format_value(value)}" for key, value in fields.items())


def stdout_is_journal() -> bool:
    """Whether fd 1 is the stream systemd connected to the journal."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        stat = os.fstat(1)
    except OSError:
        return False
    return expected == f"{stat.st_dev}:{stat.st_ino}"


class LineFormatter(logging.Formatter):
    """Formats a record as ``TIMESTAMP LEVEL message``, or ``<PRIORITY>message`` for journald."""

    def __init__(self, *, journal: bool) -> None:
        """Choose the journal form (priority prefix, no timestamp) or the plain one."""
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        """Render the record, its traceback included, as one line per physical line."""
        lines = self._message(record).splitlines() or [""]
        if self.journal:
            prefix = f"<{_priority(record.levelno)}>"
            return "\n".join(prefix + line for line in lines)
        timestamp = datetime.datetime.fromtimestamp(record.created).astimezone()
        lines[0] = f"{timestamp.isoformat(timespec='milliseconds')} {record.levelname} {lines[0]}"
        return "\n".join(lines)

    def _message(self, record: logging.LogRecord) -> str:
        """The message with any exception and stack appended, as stdlib logging does."""
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            message += "\n" + self.formatStack(record.stack_info)
        return message


class _StdoutHandler(logging.StreamHandler[TextIO]):
    """The handler setup_logging installs, marked so a second call can replace it."""


def _priority(levelno: int) -> int:
    """The syslog priority of a logging level; custom levels round down to a known one."""
    for threshold in sorted(_PRIORITIES, reverse=True):
        if levelno >= threshold:
            return _PRIORITIES[threshold]
    return _PRIORITIES[logging.DEBUG]


def _format_value(value: object) -> str:
    """One value: bare when it is a plain word, else quoted with JSON escapes."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if text and text.isprintable() and not any(c in text for c in ' "=\\'):
        return text
    return json.dumps(text, ensure_ascii=False)
