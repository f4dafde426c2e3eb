"""``python -m megacompress`` = the ``megacompress`` command."""

from megacompress.command import main

raise SystemExit(main())
