"""`python -m daemon` is the same as the `stocksync` command."""

from daemon.commands.cli import main

raise SystemExit(main())
