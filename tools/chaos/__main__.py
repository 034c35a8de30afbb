"""`python -m tools.chaos`: see `tools.chaos.cli`."""

from tools.chaos.cli import main

raise SystemExit(main())
