"""The `stocksync` commands: the composition root, and what each command prints.

    entry.py         the program's first lines: Ctrl-C during start-up is one line
    cli.py           the command line; the only module (with demo.py) that knows the adapters
    args.py          every subcommand and its flags (`--merchant NAME` among them)
    merchants.py     which merchant `once` and `drift` work on; every secret of a deployment
    check.py         `check-config`: one file, or the main file and every merchant file
    demo.py          `stocksync demo`: fakes on loopback and the real daemon against them
    demo_handoff.py  what the demo shows: the lines to copy (again on Enter), a heartbeat
    once.py          `stocksync once` and its `--dry-run`   once_report.py  its progress, summary
    remote.py        `status`, `resync`, `guard release`: a client of the running daemon
    statusview.py    `/status` as a person reads it
    history.py       `stocksync history SKU`, read-only from the state
    drift.py         `stocksync drift`: read back, compare, report
    connect.py       `check-config --connect`

A new command is a subcommand in `args.py`, run by `cli.py`, and, if it does more than print,
a module here.
"""
