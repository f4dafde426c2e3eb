"""``megacompress launch {torchrun,deepspeed,slurm}`` (megacompress.launch) and the old ``launchers/*.py``.

* ``megacompress launch --help`` lists the three launchers, each subcommand has the flags of
  its old script (every one with help), and the old scripts still run the same code (old
  SLURM jobs' pickles included);
* under torchrun, a user error the ranks hit (a corrupt shard: it exists, so validation
  passes, and only the ranks read it) is the trainer's one ``error:`` line and exit 2, and
  SIGTERM ends with the checkpoint message and exit 75 -- neither wrapped in torchrun's
  ``ChildFailedError`` report; a crash keeps that report;
* the report filter and ``run_entry_point``'s exit statuses, without processes.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import signal
import subprocess
import sys
import types

import pytest

from distributed_helpers import REPO_ROOT, cpu_env, free_port, signal_when_ready
from launch_fixtures import CONFIG, read_losses, set_args, tiny_run
from megacompress.errors import UserError
from megacompress.launch import common, deepspeed_launch, slurm, slurm_job, torchrun
from megacompress.launch.elastic_report import ReportFilter, parse_report

COMMAND = [sys.executable, "-m", "megacompress", "launch"]
TORCHRUN_ENTRIES = {"megacompress launch torchrun": [*COMMAND, "torchrun"],
                    "launchers/torchrun.py": [sys.executable, "launchers/torchrun.py"]}
ELASTIC_NOISE = ("ChildFailedError", "Traceback", "FAILED", "Root Cause", "torch.distributed.elastic")

# The flags of launchers/{torchrun,deepspeed_launch,slurm}.py before they moved into the package.
FLAGS = {
    "torchrun": {"--config", "--set", "--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port",
                 "--gpus", "--run-dir", "--module", "--dry-run"},
    "deepspeed": {"--config", "--set", "--hostfile", "--num-gpus", "--num-nodes", "--master-addr", "--master-port",
                  "--no-ssh", "--node-rank", "--gpus", "--run-dir", "--module", "--dry-run"},
    "slurm": {"--config", "--set", "--nodes", "--gpus-per-node", "--tasks-per-node", "--cpus-per-task", "--mem-gb",
              "--partition", "--time", "--account", "--qos", "--run-dir", "--array", "--array-parallelism",
              "--job-name", "--max-requeues", "--signal-delay-s", "--module", "--wait"},
}
PARSERS = {"torchrun": torchrun.build_parser, "deepspeed": deepspeed_launch.build_parser, "slurm": slurm.build_parser}


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=REPO_ROOT, env=cpu_env(kwargs.pop("env", None)), capture_output=True, text=True,
                          timeout=kwargs.pop("timeout", 120), **kwargs)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# -- the command --------------------------------------------------------------------------------


def test_launch_help_lists_the_three_launchers():
    proc = run([*COMMAND, "--help"])
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.startswith("usage: megacompress launch "), proc.stdout[:200]
    for name in ("torchrun", "deepspeed", "slurm"):
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(f"  {name} ")), None)
        assert line and line.rstrip().endswith("."), (name, proc.stdout)  # one sentence each
    unknown = run([*COMMAND, "mpirun"])
    assert unknown.returncode == 2 and "unknown subcommand 'mpirun'" in unknown.stderr, unknown.stderr


@pytest.mark.parametrize("name", list(FLAGS))
def test_each_launcher_has_its_old_flags_each_with_help(name):
    parser = PARSERS[name]()
    options = {s for action in parser._actions for s in action.option_strings}
    assert options - {"-h", "--help", "--debug"} == FLAGS[name]
    assert all(action.help for action in parser._actions), [a.dest for a in parser._actions if not a.help]
    proc = run([*COMMAND, name, "--help"])
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.startswith(f"usage: megacompress launch {name} "), proc.stdout[:200]
    assert all(flag in proc.stdout for flag in FLAGS[name])


def test_launch_errors_are_one_line():
    proc = run([*COMMAND, "torchrun", "--config", str(CONFIG), "--set", "optimizer.lrr=1", "--dry-run"])
    assert proc.returncode == 2, proc.stderr
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and "unknown config key 'optimizer.lrr' (did you mean 'optimizer.lr'?)" in errors[0]
    assert "Traceback" not in proc.stderr
    assert issubclass(common.LaunchError, UserError)


def test_old_scripts_and_old_job_pickles_still_work():
    assert common.REPO_ROOT == REPO_ROOT  # default run dirs and the PYTHONPATH of SLURM jobs
    import launchers.common
    import launchers.slurm_job

    assert launchers.slurm_job.TrainJob is slurm_job.TrainJob and launchers.common.TrainCommand is common.TrainCommand
    job = slurm_job.TrainJob(common.TrainCommand(str(CONFIG), ["optimizer.lr=1e-3"]), "/tmp/run", gpus=False)
    # New jobs are pickled (by submitit, with cloudpickle) by reference to the package...
    import cloudpickle

    assert b"megacompress.launch.slurm_job" in cloudpickle.dumps(job) and b"launchers" not in cloudpickle.dumps(job)
    # ...and a job submitted before the move, which names launchers.slurm_job, still loads.
    old = pickle.dumps(job, protocol=0).replace(b"megacompress.launch.slurm_job", b"launchers.slurm_job")
    old = old.replace(b"megacompress.launch.common", b"launchers.common")
    assert b"launchers.slurm_job" in old and pickle.loads(old) == job
    proc = run([sys.executable, "launchers/slurm_job.py"])
    assert proc.returncode == 1 and "run by SLURM jobs" in proc.stderr, proc.stderr


# -- under torchrun -----------------------------------------------------------------------------


@pytest.fixture
def corrupt_shard(tiny_data, tmp_path):
    """A train shard whose .bin is fine and whose .idx is not an index: it passes the launcher's
    checks (the files exist and are readable); the ranks fail on opening it."""
    prefix = tmp_path / "corrupt" / "train_text_document"
    prefix.parent.mkdir()
    shutil.copy(tiny_data / "train_text_document.bin", f"{prefix}.bin")
    (prefix.parent / "train_text_document.idx").write_bytes(b"not an index" * 4)
    return prefix


@pytest.mark.distributed
@pytest.mark.parametrize("entry", list(TORCHRUN_ENTRIES))
def test_user_error_in_the_ranks_is_one_line_and_exit_2(entry, corrupt_shard, tiny_data, tmp_path):
    overrides = tiny_run(tiny_data, tmp_path / "run", **{"data.data_path": f"[{corrupt_shard}]"})
    proc = run([*TORCHRUN_ENTRIES[entry], "--nproc-per-node", "2", "--master-port", str(free_port()),
                "--config", str(CONFIG), *set_args(overrides)], timeout=60)
    assert proc.returncode == 2, proc.stderr[-4000:]
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and f"{corrupt_shard}.idx" in errors[0], proc.stderr[-4000:]
    assert not any(word in proc.stderr for word in ELASTIC_NOISE), proc.stderr[-4000:]


@pytest.mark.distributed
def test_sigterm_gives_the_checkpoint_message_and_exit_75(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    overrides = tiny_run(tiny_data, run_dir, **{"schedule.train_steps": 200, "checkpoint.interval": 0})
    proc = subprocess.Popen([*COMMAND, "torchrun", "--nproc-per-node", "2", "--master-port", str(free_port()),
                             "--config", str(CONFIG), *set_args(overrides)],
                            env=cpu_env(), cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = signal_when_ready(proc, lambda: (run_dir / "metrics.jsonl").exists() and bool(read_losses(run_dir)),
                               signal.SIGTERM, timeout=50)
    assert proc.returncode == 75, stderr[-4000:]
    status = json.loads((run_dir / "exit_status.json").read_text())
    assert status["reason"] == "signal" and status["signal"] == "SIGTERM"
    assert f"checkpoint saved at step {status['step']}" in stderr and "rerun the same command to resume" in stderr
    assert not any(word in stderr for word in ELASTIC_NOISE), stderr[-4000:]
    assert error_lines(stderr) == []


@pytest.mark.distributed
def test_a_crash_keeps_torchruns_report(tiny_data, tmp_path):
    (tmp_path / "crashing_entry.py").write_text("raise RuntimeError('boom')\n")
    proc = run([*COMMAND, "torchrun", "--nproc-per-node", "2", "--master-port", str(free_port()),
                "--config", str(CONFIG), "--module", "crashing_entry", *set_args(tiny_run(tiny_data, tmp_path / "r"))],
               env={"PYTHONPATH": f"{tmp_path}:{REPO_ROOT}"}, timeout=60)
    assert proc.returncode == 1, proc.stderr[-4000:]
    assert "RuntimeError: boom" in proc.stderr
    assert "ChildFailedError" in proc.stderr and "Root Cause" in proc.stderr and "exitcode  : 1" in proc.stderr


# -- the report filter, without processes -------------------------------------------------------

LOG = "E1207 11:55:16.163000 9144 .venv/lib/python3.11/site-packages/torch/distributed/elastic/multiprocessing/api.py:1002] "
WARN = "W1207 11:55:16.131000 9144 .venv/lib/python3.11/site-packages/torch/distributed/elastic/multiprocessing/api.py:1028] "


def failure(idx: int, rank: int, exitcode: int) -> str:
    return (f"[{idx}]:\n  time      : 2026-12-07_11:55:16\n  host      : localhost\n"
            f"  rank      : {rank} (local_rank: {rank})\n  exitcode  : {exitcode} (pid: {100 + rank}) \n"
            f"  error_file: <N/A>\n  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html\n")


def torchrun_report(root: tuple[int, int], *others: tuple[int, int]) -> str:
    other = "".join(failure(i + 1, *o) for i, o in enumerate(others)) or "  <NO_OTHER_FAILURES>\n"
    return (f"{WARN}Sending process 101 closing signal SIGTERM\n"
            f"{LOG}failed (exitcode: {root[1]}) local_rank: {root[0]} (pid: 100) of binary: /usr/bin/python\n"
            "Traceback (most recent call last):\n  File \"torch/distributed/run.py\", line 1032, in <module>\n"
            "    main()\ntorch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
            f"{'=' * 60}\nmegacompress.train FAILED\n{'-' * 60}\nFailures:\n{other}{'-' * 60}\n"
            f"Root Cause (first observed failure):\n{failure(0, *root)}{'=' * 60}\n")


def filtered(chunks: list[str]):
    """(the quiet exit found, the output) of ``chunks`` through a ReportFilter, as run_launcher uses it."""
    out = io.BytesIO()
    report = ReportFilter(out)
    for chunk in chunks:
        report.feed(chunk.encode())
    report.close()
    quiet = report.quiet_exit()
    report.drop_report() if quiet else report.release()
    return quiet, out.getvalue().decode()


@pytest.mark.parametrize("root, others, quiet", [
    ((0, 2), [(1, -signal.SIGTERM)], True),      # a user error; torchrun ended the other rank
    ((1, 75), [(0, 75)], True),                  # both ranks checkpointed after a signal
    ((0, 1), [(1, -signal.SIGTERM)], False),     # a crash
    ((0, -signal.SIGSEGV), [], False),           # killed by a signal
    ((0, 2), [(1, -signal.SIGSEGV)], False),     # another rank crashed on its own
])
def test_filter_drops_only_reports_of_deliberate_exits(root, others, quiet):
    text = torchrun_report(root, *others)
    found, out = filtered(["step 1 loss 9.1\n", "error: bad input\n", text[:70], text[70:], "after\n"])
    assert (found is not None) == quiet
    assert out.startswith("step 1 loss 9.1\nerror: bad input\n") and "after" in out
    if quiet:
        assert (found.rank, found.exitcode) == root
        assert not any(word in out for word in ELASTIC_NOISE) and "Sending process" not in out, out
    else:
        assert out == "step 1 loss 9.1\nerror: bad input\n" + text + "after\n"  # all of it, as it came
    assert parse_report(text.splitlines()).root.exitcode == root[1]


def test_filter_passes_output_through_at_once():
    out = io.BytesIO()
    report = ReportFilter(out)
    report.feed(b"\r 10%|#         | 1/10")  # a progress bar redraw: no newline, shown now
    assert out.getvalue() == b"\r 10%|#         | 1/10"
    report.feed(b"\n")
    report.feed(b"error: a")  # print() writes the message, then its newline
    report.feed(b"\n")
    report.feed(b"E1207 11:55")  # may become a torch log line: held until its end
    assert out.getvalue().endswith(b"error: a\n")
    report.feed(b":16.1 9 x.py:3] not torch's\n")
    assert out.getvalue().endswith(b"E1207 11:55:16.1 9 x.py:3] not torch's\n")
    assert report.error_lines == 1 and report.quiet_exit() is None


def fake_entry(monkeypatch, behaviour) -> str:
    module = types.ModuleType("fake_entry_point")
    module.main = behaviour
    monkeypatch.setitem(sys.modules, "fake_entry_point", module)
    return "fake_entry_point"


def raising(code):
    def main(argv):
        raise SystemExit(code)
    return main


@pytest.mark.parametrize("behaviour, status, message", [
    (lambda argv: None, 0, ""),
    (lambda argv: 0, 0, ""),
    (lambda argv: 3, 3, ""),
    (lambda argv: {"documents": 5}, 0, ""),    # a result (preprocessing's summary), not a status
    (lambda argv: "it broke", 1, "it broke"),
    (raising(None), 0, ""),
    (raising(2), 2, ""),
    (raising(True), 1, ""),
    (raising("no shards left"), 1, "no shards left"),
    (raising(["odd", "status"]), 1, "['odd', 'status']"),  # was taken for success
    (raising(""), 1, "fake_entry_point exited with SystemExit(''): status 1"),
])
def test_run_entry_point_never_hides_a_failure(behaviour, status, message, monkeypatch, capsys):
    assert common.run_entry_point(fake_entry(monkeypatch, behaviour), []) == status
    err = capsys.readouterr().err
    assert (err.strip() == message) if message else err == ""
