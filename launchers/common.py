"""Kept for jobs submitted before the launchers moved into the package: their pickles name
``launchers.common.TrainCommand``. New code imports ``megacompress.launch.common``."""

from megacompress.launch.common import LaunchError, TrainCommand  # noqa: F401
