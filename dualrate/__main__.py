"""``python -m dualrate``."""

from .cli import main

raise SystemExit(main())
