"""The vocabulary every stage shares, and nothing that does work: it imports no other stage.

    models.py       the values that flow through the pipeline (records, item values, outcomes)
    errors.py       every error, grouped by what the caller should do about it
    channel.py      the extension point: what the engine needs from a channel adapter
    telemetry.py    every metric, in one place (names and labels are a contract)
    units.py        durations and rates as the config writes them
    secrets.py      secrets from environment variables or files, never from the config
    redact.py       the one scrubber that masks every secret in every text that leaves us
    bodies.py       answers read with a ceiling        retry_after.py  Retry-After, both forms
    neterrors.py    a failed request in words an operator can act on

A new metric goes in `telemetry.py` (and the README's Metrics section), a new error in `errors.py`.
"""
