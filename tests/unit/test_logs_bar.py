"""Log lines and `once`'s progress bar share the terminal: each log line prints above the bar."""

from __future__ import annotations

import io
import re
import sys

import pytest
import structlog
from rich.console import Console
from rich.progress import Progress

from daemon.shell.logs import configure_logging


def test_a_log_line_during_the_progress_bar_prints_above_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    terminal = io.StringIO()
    monkeypatch.setattr(sys, "stderr", terminal)
    configure_logging(fmt="console")  # as `once` does: no stream given, so stderr
    console = Console(file=terminal, force_terminal=True, width=60)
    with Progress(console=console) as progress:
        progress.add_task("pushes", total=10)
        structlog.get_logger("test").warning("channel.push_retry")
    text = terminal.getvalue()
    # rich erased the bar's line, printed the log line, then drew the bar again below it;
    # written past rich, the line would run on from the bar's text.
    assert re.search(r"\r\x1b\[2K\d{4}-\d\d-\d\dT[^\n]*channel\.push_retry\n", text), repr(text)
