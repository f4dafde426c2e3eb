"""Records longer than the model's max_seq_len are served, not refused (docs/gist.md, "Instruction
data sources, long records, several evaluation splits"): the end of the input is cut first, then
the record's new-token budget, then the end of the instruction; never the gists or the output's
start; counted in the summary / report. And `gist evaluate` over several splits and models."""

import json

import pytest
import torch

from megacompress import gist as gist_cli
from megacompress.data.tokenizers import build_tokenizer
from megacompress.methods.gist.data import InstructionFormat
from megacompress.methods.gist.generate import answer, fit_records
from workers.gist_common import tiny_gist_model

SHORT = [{"instruction": "Say hello.", "input": "the world", "output": "Hello, world!"},
         {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
         {"instruction": "Rewrite the sentence in the past tense.", "output": "She walked to school."}]
LONG_INPUT = {"instruction": "Say hello.", "input": "the quick brown fox " * 80, "output": "Hello there."}
LONG_INSTRUCTION = {"instruction": "Add the numbers " * 80, "input": "2 and 3", "output": "5"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("gist")
    return {variant: tiny_gist_model(root / variant, k=2, variant=variant)
            for variant in ("gist", "pos_control", "neg_control")}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_the_fitting_rule(models):
    from megacompress.models import load_pretrained

    model = load_pretrained(models["gist"]).eval()
    tok = build_tokenizer("hf", str(models["gist"]))
    fmt = InstructionFormat(tok, 2, model.config.max_seq_len)  # 128
    records = [*SHORT, LONG_INPUT, LONG_INSTRUCTION]
    formatted, budgets, counts = fit_records(model, fmt, records, 16)
    assert counts == {"records": 5, "input_truncated": 2, "input_tokens_cut": counts["input_tokens_cut"],
                      "instruction_truncated": 1, "new_tokens_capped": 1}
    for record, rec, budget in zip(records[:3], formatted, budgets):  # short records: as formatted
        assert rec == fmt.format(record["instruction"], record.get("input", "")) and budget == 16
    long_input = formatted[3]
    assert len(long_input.tokens) == 128 - 16 and budgets[3] == 16  # cut just enough
    text = tok.decode(long_input.tokens)
    assert text.startswith("Instruction: Say hello.\n<GIST><GIST>\nInput: the quick brown fox")
    assert text.endswith("\nOutput:")  # the input's end is cut, not the heads
    assert long_input.output_start == len(long_input.tokens)
    long_instruction = formatted[4]
    assert long_instruction.input_end == long_instruction.input_start  # no input left
    assert long_instruction.tokens[long_instruction.gist_start:long_instruction.gist_end] == [fmt.gist_id] * 2
    assert len(long_instruction.tokens) == 127 and budgets[4] == 1  # the output's start: one new token
    assert fmt.prefix(LONG_INSTRUCTION["instruction"]) == long_instruction.tokens[:long_instruction.gist_end]

    # generation: never an error, cached == full prompt, every row's new tokens within max_seq_len
    from megacompress.methods.gist import cache as gist_cache

    instructions = list(dict.fromkeys(r["instruction"] for r in records))
    cache = dict(zip(instructions, gist_cache.compress(model, fmt, instructions, 4)))
    got = {}
    with torch.no_grad():
        for name, kwargs in (("cached", {"cache": cache}), ("full", {})):
            counted: dict = {}
            got[name] = answer(model, fmt, records, 16, batch_size=3, counts=counted, **kwargs)
            assert counted == counts
    assert got["cached"] == got["full"] and len(got["full"][4]) <= 1
    # the training side (`fit_record`) keeps its documented rule: input first, and drops what cannot fit


def test_generate_and_evaluate_serve_long_records(models, tmp_path, capsys):
    model = str(models["gist"])
    inputs = write_jsonl(tmp_path / "in.jsonl", [*SHORT, LONG_INPUT, LONG_INSTRUCTION])
    assert gist_cli.main(["compress", "--model", model, "--instructions", str(inputs),
                          "--out", str(tmp_path / "c")]) == 0
    assert "1 too long for max_seq_len 128: their end cut, gists kept" in capsys.readouterr().out
    for flag, out in ((["--cache", str(tmp_path / "c")], "cached.jsonl"), (["--no-cache"], "full.jsonl")):
        assert gist_cli.main(["generate", "--model", model, *flag, "--inputs", str(inputs), "--batch-size", "2",
                              "--max-new-tokens", "40", "--out", str(tmp_path / out)]) == 0
        summary = capsys.readouterr().out
        assert '"input_truncated": 2' in summary and '"instruction_truncated": 1' in summary, summary
    assert (tmp_path / "cached.jsonl").read_text() == (tmp_path / "full.jsonl").read_text()
    assert gist_cli.main(["evaluate", "--model", model, "--data", str(inputs), "--max-new-tokens", "40",
                          "--efficiency-tokens", "2", "--out", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["records"] == 5 and report["truncation"]["input_truncated"] == 2  # the one-split format
    assert report["efficiency"] is not None and [row["model"] for row in report["table"]] == ["gist"]
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_several_splits_and_models_in_one_table(models, tmp_path, capsys):
    seen = write_jsonl(tmp_path / "seen.jsonl", SHORT)
    unseen = write_jsonl(tmp_path / "other.jsonl", [SHORT[1], LONG_INPUT, SHORT[0]])
    assert gist_cli.main(["evaluate", "--model", str(models["gist"]), "--data", str(seen), f"unseen={unseen}",
                          "--compare", f"pos_control={models['pos_control']}", f"neg={models['neg_control']}",
                          "--max-new-tokens", "4", "--efficiency-tokens", "2",
                          "--out", str(tmp_path / "out" / "report.json")]) == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert printed["table"] == report["table"] and report["reference"] == "gist"
    assert [(r["split"], r["model"]) for r in report["table"]] == [
        (s, m) for s in ("seen", "unseen") for m in ("gist", "pos_control", "neg")]
    assert {name: m["variant"] for name, m in report["models"].items()} == {
        "gist": "gist", "pos_control": "pos_control", "neg": "neg_control"}
    unseen_split = report["splits"]["unseen"]
    assert unseen_split["records"] == 3 and unseen_split["models"]["neg"]["truncation"]["input_truncated"] == 1
    assert set(unseen_split["comparisons"]) == {"gist_vs_pos_control", "gist_vs_neg"}
    for row in report["table"]:
        assert 0 <= row["rouge_l"] <= 100
        scores = [r["rouge_l"] for r in report["splits"][row["split"]]["models"][row["model"]]["per_record"]]
        assert row["rouge_l"] == pytest.approx(sum(scores) / len(scores))
        if row["model"] == "gist":
            assert row["ratio"] is None and row["difference_ci95"] is None
        else:
            gist = next(r for r in report["table"] if r["split"] == row["split"] and r["model"] == "gist")
            assert row["difference"] == pytest.approx(gist["rouge_l"] - row["rouge_l"])
            low, high = row["difference_ci95"]
            assert low <= high
    assert report["efficiency"]["records"] == 3
    assert (tmp_path / "out" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_refuses_clashing_names(models, tmp_path, capsys):
    from megacompress import cli

    seen = write_jsonl(tmp_path / "seen.jsonl", SHORT)
    base = ["evaluate", "--model", str(models["gist"]), "--max-new-tokens", "2"]
    assert cli.run(gist_cli.main, [*base, "--data", str(seen), f"seen={seen}"]) == 2
    assert "--data: the name(s) seen given twice" in capsys.readouterr().err
    assert cli.run(gist_cli.main, [*base, "--data", str(seen), "--compare", f"gist={models['pos_control']}"]) == 2
    assert "--compare: 'gist' names --model" in capsys.readouterr().err
    assert cli.run(gist_cli.main, [*base, "--data", str(seen), "--compare", str(models["pos_control"])]) == 2
    assert "expected NAME=DIR" in capsys.readouterr().err
