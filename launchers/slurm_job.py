"""Kept for old command lines and old jobs: ``megacompress.launch.slurm_job`` is what SLURM jobs run.

``python launchers/slurm_job.py --help`` says so, as before. Jobs submitted before the
launchers moved into the package hold pickled references to ``launchers.slurm_job.TrainJob``
/ ``EntryPointJob`` (and ``launchers.common.TrainCommand``); their sbatch scripts put this
checkout on PYTHONPATH, so these names keep them unpickling when they start or are requeued.
New jobs reference ``megacompress.launch.slurm_job`` only.
"""

import sys

from megacompress.launch.slurm_job import FIRST_NODE_ADDR_ENV, EntryPointJob, TrainJob, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
