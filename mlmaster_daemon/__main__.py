from mlmaster_daemon.cli import main

raise SystemExit(main())
