r"""Pack a corpus on SLURM: one job-array task per partition, then the merge.

    python tools/preprocess_slurm.py --partitions 8 --partition debug --time 01:00:00 \
        --input 'corpus/*.jsonl' --output-prefix data/train --append-eod --wait
    # rerun only the partitions that failed (and the merge):
    python tools/preprocess_slurm.py --partitions 8 --partition-index 3 5 ... (same flags)

Every flag that is not this script's own is a flag of ``tools/preprocess_data.py``; they are
checked here (and the inputs must exist) before anything is submitted. Array task j runs
``python -m megacompress.data.preprocess FLAGS --partitions N --partition-index I``; one
more job, submitted with ``--dependency=afterok`` on the array, runs the same FLAGS with
``--merge``. The shards are byte-identical to a one-process run. A partition that fails
cancels the merge (``--kill-on-invalid-dep``); the finished partitions stay, so rerunning
with ``--partition-index`` of the failed ones packs those alone and merges. Logs:
``--log-dir`` (default: the output prefix's directory + ``/slurm``), one folder per job.
"""

import functools
import sys

from megacompress import cli
from megacompress.data import preprocess
from megacompress.launch.partition_array import PartitionedTool, main

TOOL = PartitionedTool(module="megacompress.data.preprocess", build_parser=preprocess.build_parser,
                       script="tools/preprocess_slurm.py", job_name="megacompress-preprocess", description=__doc__)

if __name__ == "__main__":
    sys.exit(cli.run(functools.partial(main, TOOL)))
