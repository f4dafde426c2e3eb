"""Sharded preprocessing on SLURM, 1 vs 2 array tasks: ``python benchmarks/preprocess_slurm.py``.

Packs ``../shared/data/corpus/train.jsonl`` (relative to the repository root; ``--corpus``)
with GPT-2 and ``--append-eod``, repeated ``--repeat`` times (default 32, ~270 MB: the ~15 s
of fixed submit / start-up / polling costs per SLURM run must not dominate; ``--quick``: the
first 300 documents once, ~3 MB, about a minute in all), three ways:

* ``reference``: ``tools/preprocess_data.py`` in one local process (1 worker);
* 1 array task: ``tools/preprocess_slurm.py --partitions 2 --array-parallelism 1 --wait``;
  the script refuses ``--partitions 1`` (one partition needs no array), so the same array
  of 2 partitions + merge runs with at most one task at a time, i.e. on one core;
* 2 array tasks: ``tools/preprocess_slurm.py --partitions 2 --wait``: one task per node
  (the nodes have 1 CPU each), then the merge.

The SLURM runs are timed from starting ``tools/preprocess_slurm.py`` (submission) to its
exit after the merge (submitit polls the result files once a second). Every run's shard
files (``.bin``, ``.idx``, ``.meta.json``, ...) must be byte-identical to the reference's.

Cluster: a two-node cluster already up in ``$MEGACOMPRESS_SLURM_DIR`` (default
/tmp/megacompress-slurm, as ``make slurm-up NODES=2`` starts it) or in ``--slurm-dir`` is
used as it is; otherwise ``tools/slurm/start_local_cluster.sh --nodes 2`` starts one in
``--slurm-dir`` (own ports, so the test clusters and ``make slurm-up`` are never touched)
and ``tools/slurm/stop_local_cluster.sh`` stops it at the end, also on error. The two
loopback "nodes" are this machine's cores: the speed-up is bounded by 2 and by whatever
else runs here (the load average is recorded).

    .venv/bin/python benchmarks/preprocess_slurm.py [--quick] [--out benchmarks/results/preprocess_slurm.json]

Writes the JSON (key ``array_tasks``: a list of {tasks, seconds, mb_per_s, byte_identical})
and a PNG beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megacompress.atomic import write_text_atomic  # noqa: E402

CORPUS = REPO / ".." / "shared" / "data" / "corpus" / "train.jsonl"
OUT = REPO / "benchmarks" / "results" / "preprocess_slurm.json"
SLURM_TOOLS = REPO / "tools" / "slurm"
DEFAULT_SLURM_DIR = "/tmp/megacompress-slurm"  # start_local_cluster.sh's default (make slurm-up)
QUICK_DOCS = 300
NODES = ("n1", "n2")


def slurm_env(state: Path) -> dict[str, str]:
    """What start_local_cluster.sh --env prints (SLURM_CONF; the sacct stand-in first on PATH),
    plus one thread per process and the repository importable (as tests/distributed_helpers.cpu_env)."""
    return dict(os.environ, SLURM_CONF=str(state / "slurm.conf"), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                PATH=f"{SLURM_TOOLS / 'bin'}{os.pathsep}{os.environ['PATH']}",
                PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def two_nodes_up(state: Path) -> bool:
    """A cluster of nodes n1, n2 runs from ``state`` and both answer (idle, mixed or allocated)."""
    try:
        if (state / "nodes").read_text().split() != list(NODES) or not (state / "slurm.conf").is_file():
            return False
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=slurm_env(state), capture_output=True,
                             text=True, timeout=15).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    states = dict(line.split() for line in out.splitlines() if len(line.split()) == 2)
    return all(states.get(node) in ("idle", "mixed", "allocated") for node in NODES)


@contextlib.contextmanager
def cluster(private: Path, ctld_port: int):
    """Yields (environment, state dir, started): an existing two-node cluster, or one started here
    (stopped again on leaving, also on error)."""
    shared = Path(os.environ.get("MEGACOMPRESS_SLURM_DIR", DEFAULT_SLURM_DIR))
    for state in dict.fromkeys([shared, private]):
        if two_nodes_up(state):
            print(f"using the two-node SLURM cluster already up in {state}", flush=True)
            yield slurm_env(state), state, False
            return
    env = dict(os.environ, MEGACOMPRESS_SLURM_DIR=str(private), SLURMCTLD_PORT=str(ctld_port),
               SLURMD_PORT=str(ctld_port + 1), SLURM_PARTITION="debug")
    print(f"starting a two-node SLURM cluster in {private} (port {ctld_port}) ...", flush=True)
    try:
        start = subprocess.run(["bash", str(SLURM_TOOLS / "start_local_cluster.sh"), "--nodes", "2", "--env"],
                               env=env, capture_output=True, text=True, timeout=600)
        if start.returncode != 0:
            why = ("the SLURM packages cannot be installed here (tools/slurm/install_deps.sh)"
                   if start.returncode == 2 else f"start_local_cluster.sh failed ({start.returncode})")
            raise SystemExit(f"error: cannot start SLURM: {why}:\n{start.stderr.strip()[-3000:]}")
        yield slurm_env(private), private, True
    finally:
        subprocess.run(["bash", str(SLURM_TOOLS / "stop_local_cluster.sh")], env=env, capture_output=True,
                       timeout=180)
        print(f"stopped the SLURM cluster in {private}", flush=True)


def make_corpus(src: Path, dest: Path, repeat: int, docs: int | None) -> Path:
    with open(src, "rb") as f:
        data = b"".join(itertools.islice(f, docs)) if docs else f.read()
    with open(dest, "wb") as f:
        for _ in range(repeat):
            f.write(data)
    return dest


def flags(corpus: Path, prefix: Path) -> list[str]:
    return ["--input", str(corpus), "--output-prefix", str(prefix), "--tokenizer", "gpt2", "--append-eod"]


def timed(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[float, str]:
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"error: timed out after {timeout:.0f}s: {' '.join(cmd)}") from None
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                         f"{proc.stderr[-4000:]}")
    return seconds, proc.stdout


def shard_files(prefix: Path) -> dict[str, Path]:
    """Every file of the shards under ``prefix`` (``PREFIX_text_document.bin``, ``.idx``, ...), by suffix."""
    stem = f"{prefix.name}_"
    return {p.name[len(stem):]: p for p in prefix.parent.iterdir() if p.name.startswith(stem) and p.is_file()}


def same_shards(prefix: Path, reference: Path) -> bool:
    """Like tests/test_slurm_preprocess.py assert_same_shards: the same files, byte for byte, and
    no partition files left."""
    ours, theirs = shard_files(prefix), shard_files(reference)
    leftovers = [p.name for p in prefix.parent.iterdir() if ".part" in p.name]
    if leftovers:
        print(f"partition files left: {leftovers}", file=sys.stderr)
    same = bool(theirs) and ours.keys() == theirs.keys() and all(
        ours[k].read_bytes() == theirs[k].read_bytes() for k in theirs)
    if not same:
        print(f"{prefix}: shards differ from the one-process {reference} ({sorted(ours)} vs {sorted(theirs)})",
              file=sys.stderr)
    return same and not leftovers


def slurm_run(corpus: Path, out: Path, tasks: int, env: dict[str, str], time_limit: int, timeout: float) -> dict:
    prefix = out / f"t{tasks}" / "x"
    prefix.parent.mkdir(parents=True)
    own = ["--partition", "debug", "--time", str(time_limit), "--partitions", "2", "--wait"]
    if tasks == 1:
        own += ["--array-parallelism", "1"]
    cmd = [sys.executable, "tools/preprocess_slurm.py", *own, "--log-dir", str(out / f"t{tasks}_slurm"),
           *flags(corpus, prefix)]
    seconds, stdout = timed(cmd, env, timeout)
    mb = corpus.stat().st_size / 1e6
    return {"tasks": tasks, "seconds": seconds, "mb_per_s": mb / seconds,
            "command": " ".join(["tools/preprocess_slurm.py", *own]),  # + --log-dir and the flags
            "output": stdout.strip().splitlines(), "prefix": prefix}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["1 process\n(local reference)"] + [
        f"{r['tasks']} array task{'s' if r['tasks'] > 1 else ''}\n+ merge" for r in results["array_tasks"]]
    seconds = [results["reference_seconds"]] + [r["seconds"] for r in results["array_tasks"]]
    speeds = [results["reference_mb_per_s"]] + [r["mb_per_s"] for r in results["array_tasks"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    colors = ["tab:gray", "tab:blue", "tab:orange"]
    a.bar(labels, seconds, color=colors)
    a.set_ylabel("wall-clock s (submission to merged shard)")
    b.bar(labels, speeds, color=colors)
    b.set_ylabel("MB/s")
    fig.suptitle(f"GPT-2 preprocessing of {results['corpus_mb']:.1f} MB on a 2-node loopback SLURM cluster "
                 f"(2 cores shared; 2 vs 1 tasks: x{results['speedup_2_vs_1']:.2f})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="\n".join(__doc__.splitlines()[2:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="jsonl corpus (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=None, help="corpus copies to pack (default 32; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help=f"the first {QUICK_DOCS} documents once (~1 min)")
    parser.add_argument("--out", type=Path, default=OUT, help="JSON to write; the PNG goes beside it (default: %(default)s)")
    parser.add_argument("--slurm-dir", type=Path, default=Path("/tmp/megacompress-slurm-bench"),
                        help="state dir of the cluster this script starts if none is up (default: %(default)s)")
    parser.add_argument("--slurm-port", type=int, default=7117,
                        help="its slurmctld port; slurmd use the next two (default: %(default)s)")
    parser.add_argument("--time", type=int, default=30, help="SLURM time limit per job, minutes (default: 30)")
    args = parser.parse_args(argv)
    if not args.corpus.is_file():
        raise SystemExit(f"error: corpus {args.corpus} not found (--corpus)")
    repeat = args.repeat or (1 if args.quick else 32)
    timeout = 60.0 * args.time + 120
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="preprocess_slurm_") as tmp:
        tmp = Path(tmp)
        corpus = make_corpus(args.corpus, tmp / "corpus.jsonl", repeat, QUICK_DOCS if args.quick else None)
        mb = corpus.stat().st_size / 1e6
        print(f"corpus: {mb:.2f} MB ({repeat} x {'the first %d documents of ' % QUICK_DOCS if args.quick else ''}"
              f"{args.corpus})", flush=True)
        (tmp / "ref").mkdir()
        ref_prefix = tmp / "ref" / "x"
        env = dict(os.environ, OMP_NUM_THREADS="1")
        ref_seconds, ref_out = timed([sys.executable, "tools/preprocess_data.py", *flags(corpus, ref_prefix)],
                                     env, timeout)
        print(f"reference (1 local process): {ref_seconds:.1f} s, {mb / ref_seconds:.2f} MB/s", flush=True)
        runs = []
        with cluster(args.slurm_dir, args.slurm_port) as (slurm, state, started):
            for tasks in (1, 2):
                run = slurm_run(corpus, tmp, tasks, slurm, args.time, timeout)
                run["byte_identical"] = same_shards(run.pop("prefix"), ref_prefix)
                print(f"{tasks} array task(s) + merge: {run['seconds']:.1f} s, {run['mb_per_s']:.2f} MB/s, "
                      f"byte-identical: {run['byte_identical']}", flush=True)
                runs.append(run)
    one, two = runs
    results = {
        "corpus": str(args.corpus), "repeat": repeat, "quick": args.quick,
        "documents": QUICK_DOCS * repeat if args.quick else None, "corpus_mb": mb,
        "tokenizer": "gpt2", "append_eod": True,
        "cpu_count": os.cpu_count(), "load_avg_start": list(load_start), "load_avg_end": list(os.getloadavg()),
        "cluster": {"state_dir": str(state), "started_here": started, "nodes": list(NODES), "cpus_per_node": 1},
        "reference_seconds": ref_seconds, "reference_mb_per_s": mb / ref_seconds,
        "reference_summary": ref_out.strip().splitlines()[-1] if ref_out.strip() else "",
        "array_tasks": runs,
        "speedup_2_vs_1": one["seconds"] / two["seconds"],
        "note": "1 array task = --partitions 2 --array-parallelism 1 (the script refuses --partitions 1); "
                "the two loopback nodes share this machine's cores",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(results, indent=2) + "\n")
    plot(results, args.out.with_suffix(".png"))
    print(json.dumps({k: v for k, v in results.items() if k not in ("array_tasks", "cluster")}, indent=2))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    if not all(r["byte_identical"] for r in runs):
        raise SystemExit("error: the SLURM shards differ from the one-process shards")


if __name__ == "__main__":
    main()
