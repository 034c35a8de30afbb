"""`python -m tools.hostile`: see `tools.hostile.cli`."""

from tools.hostile.cli import main

raise SystemExit(main())
