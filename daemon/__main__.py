"""`python -m daemon` is the same as the `stocksync` command."""

from daemon.commands.entry import main

raise SystemExit(main())
