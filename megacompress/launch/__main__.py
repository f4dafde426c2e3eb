"""``python -m megacompress.launch LAUNCHER [flags]`` = ``megacompress launch LAUNCHER [flags]``."""

import sys

from megacompress import cli
from megacompress.launch import main

sys.exit(cli.run(main))
