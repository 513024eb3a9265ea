"""The configuration: TOML to frozen, typed settings, every fault reported at once.

    settings.py     the whole file (`[daemon]`, `[keycrm]`, `[sync]`, `[[channel]]`), validated
    ops.py          the few `[daemon]` settings the read-only commands need, no secret resolved
    dsn.py          `daemon.state` as a PostgreSQL DSN: checked, described without secrets
    fingerprint.py  what decides what is pushed where, hashed (never a secret): replicas compare it

Machine checks (the state folder, the listen address) are the shell's (`daemon.shell.preflight`),
passed in by `check-config`.
"""
