"""Sources of instruction records (`megacompress.methods.gist.sources`): JSON / JSONL / parquet
files, ``datasets`` save_to_disk directories, ``hf:NAME[:SPLIT]`` (offline: one error saying how
to bring the data over), and ``--fields`` column mappings, through the library and the CLI."""

import json
import os
import subprocess
import sys

import pytest

from distributed_helpers import cpu_env
from megacompress import cli
from megacompress import gist as gist_cli
from megacompress.methods.gist.data import InstructionDataError
from megacompress.methods.gist.sources import load_records, parse_fields
from workers.gist_common import tiny_gist_model

RECORDS = [{"instruction": "Say hello.", "input": "the world", "output": "Hello, world!"},
           {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
           {"instruction": "Rewrite the sentence in the past tense.", "input": "", "output": "She walked."}]
DOLLY = [{"instruction": r["instruction"], "context": r["input"], "response": r["output"], "category": "qa"}
         for r in RECORDS]


@pytest.fixture(scope="module")
def gist1(tmp_path_factory):
    return tiny_gist_model(tmp_path_factory.mktemp("gist"), k=1)


def _dataset(rows):
    import datasets

    return datasets.Dataset.from_list(rows)


def test_every_kind_of_source_gives_the_same_records(tmp_path):
    import datasets

    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    (tmp_path / "a.json").write_text(json.dumps(RECORDS))
    _dataset(RECORDS).to_parquet(str(tmp_path / "a.parquet"))
    _dataset(RECORDS).save_to_disk(str(tmp_path / "disk"))
    datasets.DatasetDict({"test": _dataset(RECORDS)}).save_to_disk(str(tmp_path / "dict"))
    for source in ("a.jsonl", "a.json", "a.parquet", "disk", "dict"):
        assert load_records(tmp_path / source, need_output=True) == RECORDS, source
    # Dolly-style columns, mapped; other columns dropped; a null input is no input
    rows = [dict(r) for r in DOLLY]
    rows[2]["context"] = None
    _dataset(rows).save_to_disk(str(tmp_path / "dolly"))
    _dataset(rows).to_parquet(str(tmp_path / "dolly.parquet"))
    fields = parse_fields("instruction=instruction,input=context,output=response")
    expected = [dict(r) for r in RECORDS]
    del expected[2]["input"]
    for source in ("dolly", "dolly.parquet"):
        assert load_records(tmp_path / source, fields, need_output=True) == expected


def test_bad_sources_and_fields_are_one_error_naming_the_file_and_column(tmp_path):
    import datasets

    _dataset(DOLLY).to_parquet(str(tmp_path / "dolly.parquet"))
    with pytest.raises(InstructionDataError, match=r"dolly.parquet: no column 'output'; its columns: instruction, "
                                                   r"context, response, category \(map another with --fields "
                                                   r"output=COLUMN\)"):
        load_records(tmp_path / "dolly.parquet", need_output=True)
    assert len(load_records(tmp_path / "dolly.parquet")) == 3  # serving needs no output
    with pytest.raises(InstructionDataError, match=r"dolly.parquet: no column 'answer' \(for --fields output=answer\)"):
        load_records(tmp_path / "dolly.parquet", parse_fields("output=answer"), need_output=True)
    with pytest.raises(InstructionDataError, match="unknown field 'response'"):
        parse_fields("response=output")
    with pytest.raises(InstructionDataError, match="is not FIELD=COLUMN"):
        parse_fields("instruction")
    with pytest.raises(InstructionDataError, match="no such file or directory"):
        load_records(tmp_path / "missing.jsonl")
    (tmp_path / "plain").mkdir()
    with pytest.raises(InstructionDataError, match="plain: not a directory written by datasets' save_to_disk"):
        load_records(tmp_path / "plain")
    datasets.DatasetDict({"train": _dataset(RECORDS), "test": _dataset(RECORDS)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(InstructionDataError, match="dd: holds the splits train, test; pass one of them"):
        load_records(tmp_path / "dd")
    assert load_records(tmp_path / "dd" / "test") == RECORDS
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(InstructionDataError, match="bad.parquet: cannot read as parquet"):
        load_records(tmp_path / "bad.parquet")


def test_prepare_reads_parquet_with_fields(gist1, tmp_path, capsys):
    _dataset(DOLLY * 2).to_parquet(str(tmp_path / "dolly.parquet"))
    assert gist_cli.main(["prepare", "--model", str(gist1), "--data", str(tmp_path / "dolly.parquet"),
                          "--fields", "input=context,output=response", "--out", str(tmp_path / "d")]) == 0
    meta = json.loads((tmp_path / "d.meta.json").read_text())["instruction"]
    assert meta["kept"] == 6 and meta["source"] == "dolly.parquet"
    capsys.readouterr()
    assert cli.run(gist_cli.main, ["prepare", "--model", str(gist1), "--data", str(tmp_path / "dolly.parquet"),
                                   "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dolly.parquet: no column 'output'" in err
    assert not (tmp_path / "e.meta.json").exists()


def test_a_hub_dataset_offline_is_one_error_saying_how_to_get_it(gist1, tmp_path, repo_root):
    env = {**cpu_env(), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run([sys.executable, "-m", "megacompress.gist", "prepare", "--model", str(gist1),
                           "--data", "hf:databricks/databricks-dolly-15k",
                           "--fields", "input=context,output=response", "--out", str(tmp_path / "d")],
                          env=env, capture_output=True, text=True, timeout=120, cwd=repo_root)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: hf:databricks/databricks-dolly-15k: cannot load"), lines
    assert "save_to_disk('DIR')" in lines[0] and "split='train'" in lines[0]
    assert not os.path.exists(tmp_path / "d.meta.json")
