"""benchmarks/gpu_check.py: refuses to run without CUDA, and its CPU debug mode runs every section."""

import json
import subprocess
import sys

import pytest
import torch

from distributed_helpers import REPO_ROOT, cpu_env

SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.py"
SECTIONS = ("attention", "training", "decode")


@pytest.fixture
def gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))  # the script imports benchmarks/attention.py
    import gpu_check

    return gpu_check


def run_script(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=cpu_env(), cwd=REPO_ROOT, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA refusal")
def test_without_cuda_exits_2_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    proc = run_script("--out", str(out))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line
    assert proc.stderr.startswith("error: gpu_check needs a CUDA device (torch.cuda.is_available() is False)")
    assert proc.stdout == ""
    assert not out.exists()


def test_cpu_debug_run_writes_every_section(tmp_path):
    from megacompress.attention import masks

    proc = run_script("--device", "cpu", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert (tmp_path / "gpu_check.png").stat().st_size > 0
    assert report["machine"]["debug_cpu_run"] is True
    assert report["passed"] and report["complete"] and report["failures"] == []
    for name in SECTIONS:
        assert report["sections"][name]["passed"] is True, name

    rows = report["sections"]["attention"]["results"]
    assert [r["kind"] for r in rows] == masks.mask_kinds()
    for row in rows:
        sdpa, flex = row["backends"]["sdpa"], row["backends"]["flex"]
        assert set(sdpa["max_abs_diff"]) == {"out", "dq", "dk", "dv"} and sdpa["fwd_bwd_ms"] > 0
        assert flex["backward"].startswith("skipped") and flex["passed"] is True
        assert flex["max_abs_diff"]["out"] <= flex["tolerance"]["out"]

    training = report["sections"]["training"]["results"]
    assert training["sdpa"]["tokens_per_s"] > 0 and training["sdpa"]["mfu"] is None  # no peak FLOP/s on CPU
    assert "skipped" in training["flex"]

    runs = report["sections"]["decode"]["results"]
    assert [r["backend"] for r in runs] == ["auto", "sdpa", "flex"]
    for r in runs:
        assert r["steps_done"] == len(r["step_ms"]) == len(r["graphs_compiled_per_step"]) > 0
        assert r["mean_step_ms"] > 0
        assert r["recompile_free"] is True or r["backend"] == "flex"  # flex: reported, not required


def test_compile_counter_counts_graphs_and_limit_hits(gpu_check):
    torch._dynamo.reset()
    double = torch.compile(lambda x: x * 2, backend="eager", dynamic=False)
    with gpu_check.compile_counter() as compiled:
        for n in (2, 3, 3):
            double(torch.ones(n))
    assert compiled == {"graphs": 2, "limit_hits": 0}
    inc = torch.compile(lambda x: x + 1, backend="eager", dynamic=False)
    with torch._dynamo.config.patch(recompile_limit=1), gpu_check.compile_counter() as compiled:
        for n in (2, 3, 4):
            inc(torch.ones(n))
    assert compiled == {"graphs": 1, "limit_hits": 1}
    torch._dynamo.reset()


def test_metadata_and_training_batch_are_realistic(gpu_check):
    from megacompress.attention.dispatch import AttentionMask
    from megacompress.attention import masks

    meta = gpu_check.realistic_metadata(4, 128)
    doc = meta["document_ids"]
    assert (doc[0] >= 0).all() and (doc[1:, -1] == -1).all()  # row 0 unpadded, the others padded
    assert all(int(row.max()) + 1 >= 3 for row in doc)  # several documents per row
    first_doc = (doc == 0).sum(dim=1)
    assert ((meta["gist_start"] < meta["gist_end"]) & (meta["gist_end"] <= first_doc)).all()
    assert not (meta["eos_mask"] & (doc < 0)).any()
    for kind in masks.mask_kinds():
        if kind != "causal":
            AttentionMask.build(kind, **meta)  # valid metadata for every kind

    batch = gpu_check.training_batch(4, 128, 1000, torch.device("cpu"))
    doc, pos, labels = batch["document_ids"], batch["position_ids"], batch["labels"]
    starts = torch.ones_like(doc, dtype=torch.bool)
    starts[:, 1:] = doc[:, 1:] != doc[:, :-1]
    real = doc >= 0
    assert (pos[starts & real] == 0).all() and (pos[~starts & real] > 0).all()
    assert (labels[~real] == -100).all()
    ends = torch.zeros_like(starts)
    ends[:, :-1] = starts[:, 1:]
    ends[:, -1] = True  # the last token has no target
    assert (labels[ends] == -100).all() and (labels[real & ~ends] >= 0).all()
