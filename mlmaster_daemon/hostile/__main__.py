"""`python -m mlmaster_daemon.hostile`: see `mlmaster_daemon.hostile.cli`."""

from mlmaster_daemon.hostile.cli import main

raise SystemExit(main())
