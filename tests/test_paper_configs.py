"""The paper-size configs (gist on a LLaMA-2-7B layout, the four Equal-Info M2 sizes): each loads
and validates, the job planner sizes it, and a scaled-down copy (the same keys; tiny model, batch
and steps; data written here) trains 2 steps on the CPU."""

import json
import subprocess
import sys

import pytest
import yaml
from distributed_helpers import REPO_ROOT, cpu_env

from megacompress.launch.devices import DEVICES
from megacompress.launch.plan import Cluster, plan
from megacompress.models.config import ModelConfig
from megacompress.models.flops import count_parameters
from megacompress.training.config import load_config

GIST = "gist-llama2-7b"
M2 = {"eiw-m2-25m": 25.7e6, "eiw-m2-113m": 113.3e6, "eiw-m2-403m": 398.3e6, "eiw-m2-2b": 2004e6}
CONFIGS = [GIST, *M2]
TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "ffn_hidden_size": 64}


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_validates_and_is_sized(name):
    config = load_config(REPO_ROOT / "configs" / f"{name}.yaml")
    model = config.model.build()
    result = plan(str(REPO_ROOT / "configs" / f"{name}.yaml"), Cluster(1, 8, DEVICES["h100-80gb"]))
    assert result["fits"] and result["tokens_per_s_estimate"] > 0 and result["precision"] == "bf16"
    if name == GIST:  # the gist paper's LLaMA-7B recipe
        assert (model.architecture, model.gist_tokens, model.max_seq_len, model.hidden_size) == ("gist", 1, 512, 4096)
        assert 6.7e9 < count_parameters(model).total < 6.8e9
        assert (config.parallel.zero_stage, config.parallel.precision, config.schedule.global_batch_size,
                config.schedule.train_steps, config.optimizer.lr, config.schedule.decay) == (3, "bf16", 128, 3000,
                                                                                              2e-5, "cosine")
    else:  # the paper's sizes count non-embedding parameters
        assert count_parameters(model).non_embedding == pytest.approx(M2[name], rel=0.02)
        assert model.vocab_size == 65539 and config.data.kind == "bitstream"


@pytest.fixture(scope="module")
def bitstream_shard(tmp_path_factory):
    from workers.equal_info_m1 import save_tiny_m1

    from megacompress.methods.equal_info.compress import main as compress_main

    tmp = tmp_path_factory.mktemp("eq")
    texts = [json.loads(line)["text"][:600] for line in (REPO_ROOT / "data/sample/train.jsonl").open()][:12]
    (tmp / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    compress_main(["--m1", str(save_tiny_m1(tmp / "m1")), "--input", str(tmp / "c.jsonl"), "--output-prefix",
                   str(tmp / "eq"), "--window-bits", "16", "--vocab", "65536"])
    return tmp / "eq_text_document"


@pytest.fixture(scope="module")
def tiny_llama_gist(tmp_path_factory):
    """A tiny random LLaMA-layout HF model -> import-hf -> gist init (k=1) -> instruction shard."""
    from workers.gist_common import write_tiny_hf_llama

    from megacompress.data.tokenizers import build_tokenizer
    from megacompress.methods.gist.data import prepare_instruction_shard
    from megacompress.methods.gist.init import init_gist_model
    from megacompress.models.hf_llama import import_hf

    tmp = tmp_path_factory.mktemp("llama")
    write_tiny_hf_llama(tmp / "hf")
    imported = import_hf(tmp / "hf", tmp / "imported", max_seq_len=512)
    gist = init_gist_model(imported, 1, tmp / "gist1")
    records = [json.loads(line) for line in (REPO_ROOT / "data/instructions/valid.jsonl").open()][:16]
    (tmp / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    prepare_instruction_shard(str(tmp / "records.jsonl"), build_tokenizer("hf", str(gist)), 1, str(tmp / "data"))
    return gist, tmp / "data"


def scaled_down(name: str, tmp_path, data: dict) -> dict:
    """The config's own YAML with tiny sizes, 2 steps and this test's data: every key kept, new ones only
    in the model section (a preset's fields overridden)."""
    config = yaml.safe_load((REPO_ROOT / "configs" / f"{name}.yaml").read_text())
    before = {section: set(values) for section, values in config.items() if isinstance(values, dict)}
    config["schedule"].update(train_steps=2, warmup_steps=1, global_batch_size=4, micro_batch_size=2)
    config["eval"].update(iters=1, interval=0)
    config["checkpoint"].update(interval=0)
    config["logging"].update(run_dir=str(tmp_path / "run"), log_interval=1)
    for section, values in data.items():
        config[section].update(values)
    after = {section: set(values) for section, values in config.items() if isinstance(values, dict)}
    assert all(before[section] <= after[section] for section in before)
    assert all(after[section] == before[section] for section in before if section != "model")
    return config


def train(config: dict, tmp_path) -> subprocess.CompletedProcess:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "megacompress.train", "--config", str(tmp_path / "config.yaml"),
                           "--set", "logging.progress_bar=false"], cwd=REPO_ROOT, env=cpu_env(),
                          capture_output=True, text=True, timeout=300)


def trained_steps(tmp_path) -> list[int]:
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if r["split"] == "train"]


@pytest.mark.parametrize("name", list(M2))
def test_scaled_down_m2_config_trains_two_steps(name, bitstream_shard, tmp_path):
    shard = str(bitstream_shard)
    config = scaled_down(name, tmp_path, {
        "model": {**TINY, "max_seq_len": 64},
        "data": {"data_path": [shard]}, "eval": {"data_path": [shard]},
        "tokenizer": {"model_path": f"{shard}.meta.json"},
    })
    done = train(config, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert trained_steps(tmp_path) == [1, 2]


def test_scaled_down_gist_config_trains_two_steps(tiny_llama_gist, tmp_path):
    gist, data = tiny_llama_gist
    shape = ModelConfig.from_dict(json.loads((gist / "config.json").read_text()))
    keys = ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "ffn_hidden_size", "rope_theta",
            "norm_eps", "tie_embeddings")
    config = scaled_down(GIST, tmp_path, {
        "model": {"init_from": str(gist), **{k: getattr(shape, k) for k in keys}},
        "data": {"data_path": [str(data)]}, "eval": {"data_path": [str(data)]},
        "tokenizer": {"model_path": str(gist)},
    })
    assert config["parallel"] == {"tensor_parallel_size": 1, "zero_stage": 3, "precision": "bf16"}
    done = train(config, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert trained_steps(tmp_path) == [1, 2] and "(model.init_from)" in done.stdout
