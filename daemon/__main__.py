"""``python -m daemon`` is ``wapipe``."""

from daemon.cli import main

raise SystemExit(main())
