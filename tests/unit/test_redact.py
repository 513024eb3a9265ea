"""The process-wide scrubber: every spelling of every known secret, old ones included."""

from __future__ import annotations

import io
import json
import logging
import secrets

import structlog

from daemon.core import redact
from daemon.shell.logs import configure_logging


def fresh(prefix: str = "s") -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


def test_a_registered_secret_is_masked_in_every_spelling_and_deeply() -> None:
    secret = fresh() + "/+ é"
    redact.update([secret])
    text = f"a {secret} b {secret}"
    assert redact.scrub_text(text) == "a *** b ***"
    from urllib.parse import quote

    assert secret not in redact.scrub_text(quote(secret, safe=""))
    assert redact.scrub_text(json.dumps(secret)[1:-1]) == "***"
    assert redact.scrub({"k": [secret, (1, secret)], secret: None}) == {
        "k": ["***", (1, "***")],
        "***": None,
    }


def test_a_rotated_secret_and_its_predecessor_both_stay_masked() -> None:
    old, new = fresh("old"), fresh("new")
    redact.update([old])
    assert redact.scrub_text(new) == new
    redact.update([new])
    assert redact.scrub_text(f"{old} {new}") == "*** ***"


def test_a_secret_containing_another_is_masked_whole() -> None:
    short = fresh()
    long = short + "-and-more"
    redact.update([short, long])
    assert redact.scrub_text(long) == "***"


def test_very_short_secrets_are_not_masked_so_text_survives() -> None:
    redact.update(["ab"])
    assert redact.scrub_text("tab cab") == "tab cab"


def test_the_scrubbing_stream_masks_whatever_is_printed() -> None:
    secret = fresh()
    redact.update([secret])
    inner = io.StringIO()
    stream = redact.ScrubbingStream(inner)
    print(f"token={secret}", file=stream)  # type: ignore[arg-type]
    stream.writelines([secret, "\n"])
    assert inner.getvalue() == "token=***\n***\n"


def test_log_lines_of_structlog_and_of_the_logging_module_are_scrubbed() -> None:
    secret = fresh()
    buffer = io.StringIO()
    configure_logging(fmt="json", level="info", secrets=[secret], stream=buffer)
    try:
        structlog.get_logger("t").warning("ours", error=RuntimeError(f"echo {secret}"), n=3)
        try:
            raise ValueError(f"boom {secret}")
        except ValueError:
            logging.getLogger("aiohttp.server").exception("theirs %s", secret)
    finally:
        logging.getLogger().handlers = [
            h for h in logging.getLogger().handlers if getattr(h, "stream", None) is not buffer
        ]
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert secret not in buffer.getvalue()
    ours, theirs = lines
    assert ours["error"] == "echo ***" and ours["n"] == 3
    assert theirs["event"] == "theirs ***"
    assert theirs["logger"] == "aiohttp.server"
    assert theirs["level"] == "error"
    assert "ValueError: boom ***" in theirs["exception"]
