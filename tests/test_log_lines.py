"""Log lines for journald and terminals: syslog priorities when stdout is the journal, time and
level on a terminal, fields quoted only when needed, and events by name."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tentacle.common.logs import event, format_fields
from tentacle.errors import ConfigError

# --- logs ---------------------------------------------------------------------------------

LOGGING_SCRIPT = """
import logging
from tentacle.common.logs import event, setup_logging
setup_logging("info")
setup_logging("info")  # a second call must not double every line
log = logging.getLogger("tentacle.test")
event(log, "package.mirror_failed", logging.WARNING, mirror="https://m1", error="timed out")
event(log, "step.started", step="Deploy web")
event(log, "debug.hidden", logging.DEBUG)
try:
    1 / 0
except ZeroDivisionError:
    log.exception("step.crashed")
"""


def _run_logging(tmp_path: Path, *, journal: bool) -> list[str]:
    """Run LOGGING_SCRIPT with stdout to a file, JOURNAL_STREAM naming it or not."""
    output = tmp_path / "stdout"
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with output.open("w") as stdout:
        if journal:
            stat = os.fstat(stdout.fileno())
            env["JOURNAL_STREAM"] = f"{stat.st_dev}:{stat.st_ino}"
        subprocess.run([sys.executable, "-c", LOGGING_SCRIPT], stdout=stdout, env=env, check=True)
    return output.read_text().splitlines()


def test_journal_lines_carry_syslog_priorities(tmp_path: Path) -> None:
    """When stdout is the journal, each line starts with <priority> and has no timestamp."""
    lines = _run_logging(tmp_path, journal=True)
    assert lines[:3] == [
        '<4>package.mirror_failed mirror=https://m1 error="timed out"',
        '<6>step.started step="Deploy web"',
        "<3>step.crashed",
    ]
    assert lines[3] == "<3>Traceback (most recent call last):"
    assert all(line.startswith("<3>") for line in lines[3:])
    assert lines[-1] == "<3>ZeroDivisionError: division by zero"


def test_terminal_lines_carry_timestamp_and_level(tmp_path: Path) -> None:
    """Elsewhere each event line starts with an ISO timestamp and the level word."""
    lines = _run_logging(tmp_path, journal=False)
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"
    assert re.fullmatch(stamp + r' WARNING package\.mirror_failed mirror=\S+ error="timed out"', lines[0])
    assert re.fullmatch(stamp + r' INFO step\.started step="Deploy web"', lines[1])
    assert re.fullmatch(stamp + r" ERROR step\.crashed", lines[2])
    assert not any("debug.hidden" in line for line in lines)


def test_fields_are_quoted_only_when_needed() -> None:
    """Plain words stay bare; spaces, quotes, '=', newlines and empties are JSON-quoted."""
    rendered = format_fields(
        a="plain", b="two words", c='say "hi"', d="k=v", e="", f="line\nbreak", g=True, h=3
    )
    assert rendered == ('a=plain b="two words" c="say \\"hi\\"" d="k=v" e="" f="line\\nbreak" g=true h=3')


def test_event_logs_name_and_fields(caplog: pytest.LogCaptureFixture) -> None:
    """event() logs one record whose message is the event name and its fields."""
    with caplog.at_level(logging.INFO, logger="tentacle.test"):
        event(logging.getLogger("tentacle.test"), "package.verified", id="Web", size=10)
    assert [r.getMessage() for r in caplog.records] == ["package.verified id=Web size=10"]
    assert caplog.records[0].funcName == "test_event_logs_name_and_fields"


def test_unknown_log_level_is_a_config_error() -> None:
    """An unknown level is a configuration error (exit 78) naming the choices."""
    from tentacle.common.logs import setup_logging

    with pytest.raises(ConfigError, match="'loud' is not one of debug, info"):
        setup_logging("loud")
