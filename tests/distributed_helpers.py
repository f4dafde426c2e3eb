"""Run a worker script under real multi-process launchers (gloo, CPU) from tests.

Workers receive ``--out DIR`` and write one result file per rank there (``torch.save``),
which the test then compares with a single-process reference.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for CPU workers: one thread each (2-core CI), DeepSpeed on CPU, repo importable."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        DS_ACCELERATOR="cpu",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
    )
    env.update(extra or {})
    return env


def run_torchrun(
    script: str | Path,
    nproc: int,
    args: list[str] | None = None,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    nnodes: int = 1,
) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node nproc script args`` on 127.0.0.1; raises with the logs on failure."""
    return run_checked(torchrun_command(nproc, [str(script), *(args or [])], nnodes=nnodes), env=cpu_env(env),
                       timeout=timeout)


def torchrun_command(nproc: int, target: list[str], *, nnodes: int = 1) -> list[str]:
    """The torchrun command line on 127.0.0.1 (a free port) for ``target``: ``[script, *args]``
    or ``["-m", module, *args]``."""
    return [
        sys.executable, "-m", "torch.distributed.run",
        f"--nproc-per-node={nproc}", f"--nnodes={nnodes}",
        "--master-addr=127.0.0.1", f"--master-port={free_port()}",
        *target,
    ]


def run_checked(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 300,
                cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env or cpu_env(), cwd=cwd or REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n"
            f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


def signal_when_ready(proc: subprocess.Popen, ready, sig: int, timeout: float = 120) -> str:
    """Send ``sig`` to ``proc`` once ``ready()`` is true; wait for it to exit and return its stderr
    (killed on any failure, so no run outlives the test)."""
    import time

    try:
        deadline = time.time() + timeout
        while not ready():
            assert proc.poll() is None and time.time() < deadline, "training did not start"
            time.sleep(0.02)
        proc.send_signal(sig)
        return proc.communicate(timeout=timeout)[1]
    finally:
        proc.kill()


def as_command(main, argv: list[str]):
    """``main(argv)`` as its command line runs it (`megacompress.cli.run`): a user error is one
    ``error:`` line on stderr and ``SystemExit(2)``."""
    from megacompress import cli

    raise SystemExit(cli.run(main, argv))


def assert_same_shards(prefix, reference, extensions) -> None:
    """The ``{prefix}_text_document{ext}`` files equal the one-process ``reference``'s byte for byte,
    and no partition file is left beside them."""
    from pathlib import Path

    for ext in extensions:
        ours, theirs = Path(f"{prefix}_text_document{ext}"), Path(f"{reference}_text_document{ext}")
        assert ours.read_bytes() == theirs.read_bytes(), f"{ours} differs from the one-process {theirs}"
    leftovers = [p.name for p in Path(prefix).parent.iterdir() if ".part" in p.name]
    assert not leftovers, f"partition files left: {leftovers}"
