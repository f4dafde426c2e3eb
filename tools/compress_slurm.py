r"""Compress a corpus into Equal-Info bitstream shards on SLURM: one job-array task per partition, then the merge.

    python tools/compress_slurm.py --partitions 64 --cpus-per-task 1 --partition cpu --time 04:00:00 \
        --m1 runs/m1/export --input 'corpus/*.jsonl' --output-prefix runs/eq/train --wait
    # rerun only the partitions that failed (and the merge):
    python tools/compress_slurm.py --partitions 64 --partition-index 3 5 ... (same flags)

Every flag that is not this script's own is a flag of ``tools/compress_corpus.py`` (``--m1``,
``--scheme``, ``--window-bits``, ...); they are checked here (and the inputs must exist)
before anything is submitted. Array task j runs ``python -m
megacompress.methods.equal_info.compress FLAGS --partitions N --partition-index I`` (every
task loads M1 once and codes its byte range of the input); one more job, submitted with
``--dependency=afterok`` on the array, runs the same FLAGS with ``--merge``. The shards are
byte-identical to a one-process run. A partition that fails cancels the merge; the
committed partitions stay, so rerunning with ``--partition-index`` of the failed ones
compresses those alone and merges. Logs: ``--log-dir`` (default: the output prefix's
directory + ``/slurm``), one folder per job. docs/equal_info.md gives the throughput per
worker to size ``--partitions``.
"""

import functools
import sys

from megacompress import cli
from megacompress.launch.partition_array import PartitionedTool, main
from megacompress.methods.equal_info import compress

TOOL = PartitionedTool(module="megacompress.methods.equal_info.compress", build_parser=compress.build_parser,
                       script="tools/compress_slurm.py", job_name="megacompress-compress", description=__doc__)

if __name__ == "__main__":
    sys.exit(cli.run(functools.partial(main, TOOL)))
