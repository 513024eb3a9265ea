"""The configuration: TOML to frozen, typed settings, every fault reported at once.

    settings.py     the whole file (`[daemon]`, `[keycrm]`, `[sync]`, `[[channel]]`), validated
    channels.py     one `[[channel]]` table: the engine's keys, the adapter's, and its rules
    fields.py       durations, rates, URLs; the frozen base; a validation error as faults
    ops.py          the few `[daemon]` settings the read-only commands need, no secret resolved
    dsn.py          `daemon.state` as a PostgreSQL DSN: checked, described without secrets
    fingerprint.py  what decides what is pushed where, hashed (never a secret): replicas compare it

Machine checks (the state folder, the listen address) are the shell's (`daemon.shell.preflight`),
passed in by `check-config`.
"""
