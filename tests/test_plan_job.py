"""The job planner (`megacompress launch plan`, tools/plan_job.py): its JSON, the ZeRO sharding
arithmetic, fit / no fit, both command forms, one-line errors, and the activation model
against the tensors the block really saves for backward."""

import json
import subprocess
import sys

import pytest
import torch
from distributed_helpers import REPO_ROOT, cpu_env

from megacompress.launch.common import LaunchError
from megacompress.launch.devices import DEVICES
from megacompress.launch.memory_model import JobShape, block_activation_bytes
from megacompress.launch.plan import Cluster, plan
from megacompress.models.config import ModelConfig
from megacompress.models.registry import build_model
from megacompress.training.activation_memory import saved_activation_bytes

BASELINE = "configs/baseline12.yaml"
H100 = DEVICES["h100-80gb"]


def sized(config=BASELINE, nodes=1, gpus=8, device=H100, sets=()):
    return plan(str(REPO_ROOT / config), Cluster(nodes, gpus, device), overrides=list(sets))


def test_plan_json_has_the_contract_keys():
    result = sized()
    assert set(result["memory_per_gpu_gb"]) >= {"parameters", "gradients", "optimizer", "activations", "total"}
    for key in ("fits", "tokens_per_s_estimate", "world_size", "dp", "tp", "micro_batch", "accumulation_steps",
                "comm_bytes_per_step", "assumptions", "zero_stage", "precision"):
        assert key in result, key
    memory = result["memory_per_gpu_gb"]
    assert memory["total"] == pytest.approx(sum(v for k, v in memory.items() if k not in (
        "total", "activations", "optimizer_step_temporary")) + max(memory["activations"],
                                                                     memory["optimizer_step_temporary"]))
    assert result["world_size"] == 8 and result["dp"] == 8 and result["accumulation_steps"] == 4096 // (16 * 8)
    assert result["precision"] == "bf16" and result["fits"] is True
    # tokens/s = GPUs x MFU x 989 TFLOP/s / FLOPs per token
    assert result["tokens_per_s_estimate"] == pytest.approx(8 * 0.4 * 989e12 / result["flops_per_token"])


def test_zero_stages_shard_what_they_should():
    def parts(zero, gpus):
        return sized(gpus=gpus, sets=[f"parallel.zero_stage={zero}"])["memory_per_gpu_gb"]

    for zero in (0, 1, 2, 3):
        one, eight = parts(zero, 1), parts(zero, 8)
        assert eight["activations"] == one["activations"]  # the micro batch is per GPU
        sharded_optimizer = eight["optimizer"] == pytest.approx(one["optimizer"] / 8)
        assert sharded_optimizer == (zero >= 1), zero
        assert (eight["parameters"] == pytest.approx(one["parameters"] / 8)) == (zero == 3), zero
    # ZeRO-2 keeps the gradient partition only; ZeRO-1 the full gradients plus the partition
    assert parts(2, 8)["gradients"] == pytest.approx(parts(2, 1)["gradients"] / 8)
    assert parts(1, 8)["gradients"] > parts(1, 1)["gradients"] / 2
    # 16 bytes per parameter in mixed precision without ZeRO: 2 weights + 2 (+4 fp32 at the step) gradients + 12
    plain = sized(gpus=1, sets=["parallel.zero_stage=0"])
    params = plain["model"]["parameters_per_gpu"]
    memory = plain["memory_per_gpu_gb"]
    assert memory["parameters"] * 2**30 == pytest.approx(2 * params)
    assert memory["optimizer"] * 2**30 == pytest.approx(12 * params)


def test_fits_and_does_not_fit():
    assert sized("configs/gist-llama2-7b.yaml")["fits"] is True
    alone = sized("configs/gist-llama2-7b.yaml", gpus=1, device=DEVICES["a100-40gb"],
                  sets=["parallel.zero_stage=0", "schedule.global_batch_size=4"])
    assert alone["fits"] is False and alone["memory_per_gpu_gb"]["total"] > 100  # 7 B x 16 bytes alone


def test_recompute_and_sequence_parallel_cut_activations():
    base = sized(sets=["parallel.tensor_parallel_size=2"])["memory_per_gpu_gb"]["activations"]
    full = sized(sets=["parallel.tensor_parallel_size=2", "parallel.recompute=full"])["memory_per_gpu_gb"]
    sp = sized(sets=["parallel.tensor_parallel_size=2", "parallel.sequence_parallel=true"])["memory_per_gpu_gb"]
    assert full["activations"] < base / 2 and sp["activations"] < base


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_activations_equal_the_saved_tensors(dtype):
    """What one more block adds to the tensors autograd saves (CPU, dense SDPA) is the model's term."""

    def saved_bytes(layers):
        config = ModelConfig.from_preset("tiny", num_layers=layers, max_seq_len=32, num_kv_heads=2)
        model = build_model(config, seed=0).to(dtype)
        ids = torch.randint(0, 1000, (2, 32))
        _, saved = saved_activation_bytes(
            lambda: model(ids, torch.arange(32).expand(2, 32), torch.zeros_like(ids), labels=ids), model.parameters())
        return saved, config

    one, _ = saved_bytes(1)
    two, config = saved_bytes(2)
    shape = JobShape(tp=1, dp=1, zero=0, micro_batch=2, seq_len=32, bf16=dtype == torch.bfloat16, gpu=False)
    assert two - one == block_activation_bytes(config, shape)


def run(argv):
    return subprocess.run([sys.executable, *argv], cwd=REPO_ROOT, env=cpu_env(), capture_output=True, text=True,
                          timeout=120)


def test_both_command_forms_write_the_same_plan(tmp_path):
    args = ["--config", BASELINE, "--nodes", "2", "--gpus-per-node", "8", "--gpu", "h200-141gb", "--mfu", "0.35"]
    tool = run(["tools/plan_job.py", *args, "--out", str(tmp_path / "a.json")])
    command = run(["-m", "megacompress", "launch", "plan", *args, "--out", str(tmp_path / "b.json")])
    assert tool.returncode == 0 and command.returncode == 0, tool.stderr + command.stderr
    assert "fits" in tool.stdout and "tokens/s at MFU 0.35" in tool.stdout
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert a == b and a["world_size"] == 16 and a["gpu"] == "h200-141gb"
    usage = run(["tools/plan_job.py", "--help"])
    assert usage.returncode == 0 and usage.stdout.startswith("usage: python tools/plan_job.py ")
    assert "plan" in run(["-m", "megacompress", "launch", "--help"]).stdout


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: --config"),
    (["--config", BASELINE, "--gpu", "h900"], "invalid choice: 'h900'"),
    (["--config", BASELINE, "--nodes", "0"], "--nodes must be >= 1"),
    (["--config", BASELINE, "--mfu", "2"], "--mfu must be in (0, 1]"),
    (["--config", "configs/nope.yaml"], "configs/nope.yaml does not exist"),
    (["--config", BASELINE, "--set", "parallel.zero_stag=1"], "unknown config key 'parallel.zero_stag'"),
    (["--config", BASELINE, "--set", "parallel.tensor_parallel_size=3"], "is not a multiple of"),
    (["--config", BASELINE, "--gpus-per-node", "3"], "global batch size 4096 is not a positive multiple"),
])
def test_bad_arguments_are_one_line_and_exit_2(argv, message):
    proc = run(["tools/plan_job.py", *argv])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr


def test_plan_raises_launch_error_in_process():
    with pytest.raises(LaunchError, match="is not a multiple of"):
        sized(sets=["parallel.tensor_parallel_size=3"])
