"""Received files are untrusted: a tokenizer record, a gist cache, a model directory, an HF
directory, an output path or a shard's meta that is wrong ends as one named error (``error:``
line, exit status 2 for the CLIs), never a traceback, a path outside its directory or a silent
wrong result."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from megacompress.data.tokenizers import (TOKENIZER_RECORD, BytesTokenizer, check_model_tokenizer, model_tokenizer,
                                          save_tokenizer)
from megacompress.methods.gist import cache as gist_cache
from megacompress.integrity import IntegrityError, digest_file
from megacompress.models import GPT, ModelConfig, load_pretrained, pretrained
from workers.equal_info_m1 import save_tiny_m1
from workers.gist_common import tiny_gist_model, write_tiny_hf_llama

REPO = Path(__file__).resolve().parents[1]


def one_error(*args: str, expect: str) -> str:
    """Run a CLI; it must fail with exit status 2 and exactly one ``error:`` line containing ``expect``."""
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(errors) == 1 and expect in errors[0], done.stderr[-3000:]
    return errors[0]


def tiny_model(directory: Path) -> Path:
    """A random tiny GPT with the bytes tokenizer recorded, sealed as an export seals it."""
    GPT(ModelConfig(vocab_size=300, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2, ffn_hidden_size=64,
                    max_seq_len=64)).save_pretrained(directory)
    save_tokenizer(BytesTokenizer(), str(directory))
    pretrained.seal(directory)
    return directory


def test_tokenizer_record_names_a_file_inside_the_model_directory_and_is_checked(tmp_path):
    model = tiny_model(tmp_path / "model")
    record = model / TOKENIZER_RECORD
    good = json.loads(record.read_text())
    assert model_tokenizer(str(model)).name == "bytes"
    outside = {**good, "kind": "sentencepiece", "model_file": "../../../../etc/passwd"}
    bad = [(outside, "'../../../../etc/passwd' points outside"),
           ({**good, "kind": "hf", "model_file": "/etc/passwd"}, "'/etc/passwd' points outside"),
           ({**good, "kind": "sentencepiece", "model_file": None}, "names no model_file"),
           ({"kind": "bytes"}, "fingerprint"), ({**good, "kind": ["bytes"]}, "kind"),
           ([good], "not a tokenizer record")]
    for text, expect in bad:
        record.write_text(json.dumps(text))
        for read in (lambda: model_tokenizer(str(model)), lambda: check_model_tokenizer(str(model), BytesTokenizer())):
            with pytest.raises(IntegrityError, match=f"{TOKENIZER_RECORD}: .*{expect}"):
                read()
    record.write_text("{not json")
    with pytest.raises(IntegrityError, match="not valid JSON"):
        model_tokenizer(str(model))
    # End to end, in a directory without a manifest (one written before digests were recorded)
    record.write_text(json.dumps(outside))
    (model / pretrained.MANIFEST_NAME).unlink()
    one_error("-m", "megacompress.generate", "--model", str(model), "--prompt", "hi", expect="points outside")


def test_generate_refuses_unreadable_weights_in_one_line(tmp_path):
    model = tiny_model(tmp_path / "model")
    weights = model / pretrained.WEIGHTS_NAME
    weights.write_bytes(os.urandom(weights.stat().st_size))
    one_error("-m", "megacompress.generate", "--model", str(model), "--prompt", "hi", expect=str(weights))
    (model / pretrained.MANIFEST_NAME).unlink()  # unverified: the safetensors reader itself must refuse it
    one_error("-m", "megacompress.generate", "--model", str(model), "--prompt", "hi",
              expect=f"{weights}: cannot read safetensors file")


@pytest.fixture(scope="module")
def gist(tmp_path_factory):
    """(model dir, model, format, a stored cache of two instructions)."""
    from megacompress.methods.gist.data import InstructionFormat
    from megacompress.data.tokenizers import build_tokenizer

    root = tmp_path_factory.mktemp("gist")
    directory = tiny_gist_model(root, k=2)
    model = load_pretrained(directory).eval()
    fmt = InstructionFormat(build_tokenizer("hf", str(directory)), 2)
    instructions = ["Say hello.", "Add the numbers."]
    old = os.umask(0o022)
    try:
        with torch.no_grad():
            path = gist_cache.save_cache(root / "cache", instructions, gist_cache.compress(model, fmt, instructions),
                                         model_hash=gist_cache.model_identity(directory), model_dir=str(directory),
                                         k=2, tokenizer_fingerprint=fmt.tokenizer.fingerprint())
    finally:
        os.umask(old)
    return directory, model, fmt, path


def open_cache(gist, path):
    directory, model, fmt, _ = gist
    return gist_cache.GistCache(path, model, model_hash=gist_cache.model_identity(directory),
                                tokenizer_fingerprint=fmt.tokenizer.fingerprint())


def copy_cache(source: Path, target: Path, edit=None) -> Path:
    target.mkdir()
    for name in (gist_cache.INDEX, gist_cache.TENSORS):
        (target / name).write_bytes((source / name).read_bytes())
    if edit is not None:
        index = json.loads((target / gist_cache.INDEX).read_text())
        edit(index)
        (target / gist_cache.INDEX).write_text(json.dumps(index))
    return target


def test_a_stored_gist_cache_is_readable_by_the_team(gist):
    path = gist[3]
    assert {oct((path / name).stat().st_mode & 0o777) for name in (gist_cache.INDEX, gist_cache.TENSORS)} == {"0o644"}
    assert len(open_cache(gist, path)) == 2


def _entry(index: dict) -> dict:
    return next(iter(index["entries"].values()))


INDEX_EDITS = {
    "k None is not a number": lambda i: i.pop("k"),
    "prefix_len -5 must be a whole number": lambda i: _entry(i).update(prefix_len=-5),
    "prefix_len 2 must be": lambda i: _entry(i).update(prefix_len=2),  # not above k
    "prefix_len 128 must be": lambda i: _entry(i).update(prefix_len=128),  # max_seq_len
    "prefix_len True must be": lambda i: _entry(i).update(prefix_len=True),
    "no model.model_hash": lambda i: i.update(model="x"),
    "made with another tokenizer": lambda i: i.update(tokenizer_fingerprint="0" * 64),
    "dtype 'float16'": lambda i: i.update(dtype="float16"),
    "no entries object": lambda i: i.update(entries=[]),
    "not a 32-hex-digit instruction key": lambda i: i.update(entries={"../x": _entry(i)}),
    "holds an instruction whose key": lambda i: _entry(i).update(instruction="Another instruction."),
    "has no instruction text": lambda i: _entry(i).update(instruction=None),
    "no digest": lambda i: i.pop("digest"),
    "cache format 1": lambda i: i.update(format=1),
}


def test_every_field_of_a_gist_cache_index_is_checked(gist, tmp_path):
    for n, (expect, edit) in enumerate(INDEX_EDITS.items()):
        path = copy_cache(gist[3], tmp_path / str(n), edit)
        with pytest.raises(gist_cache.GistCacheError, match=expect.replace("(", r"\(")):
            open_cache(gist, path)
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / gist_cache.INDEX).write_text("[1, 2")
    with pytest.raises(gist_cache.GistCacheError, match="index.json: not valid JSON"):
        open_cache(gist, tmp_path / "json")


def test_gist_cache_tensors_are_checked_before_use(gist, tmp_path):
    model = gist[1]
    garbage = copy_cache(gist[3], tmp_path / "garbage")
    size = (garbage / gist_cache.TENSORS).stat().st_size
    (garbage / gist_cache.TENSORS).write_bytes(os.urandom(size))
    with pytest.raises(gist_cache.GistCacheError, match="gists.safetensors: unusable .*contents changed"):
        open_cache(gist, garbage)

    def rewrite(name: str, tensors: dict) -> Path:
        path = copy_cache(gist[3], tmp_path / name)
        save_file(tensors, str(path / gist_cache.TENSORS))
        index = json.loads((path / gist_cache.INDEX).read_text())
        index["digest"] = digest_file(path / gist_cache.TENSORS)  # consistent, but not this model's tensors
        (path / gist_cache.INDEX).write_text(json.dumps(index))
        return path

    keys = list(json.loads((gist[3] / gist_cache.INDEX).read_text())["entries"])
    c = model.config
    shape = (c.num_layers, c.num_kv_heads, c.gist_tokens, c.head_dim)
    right = {f"{key}.{side}": torch.zeros(shape) for key in keys for side in "kv"}
    assert len(open_cache(gist, rewrite("right", right))) == 2
    other_heads = {**right, f"{keys[0]}.k": torch.zeros(c.num_layers, 1, c.gist_tokens, c.head_dim)}
    with pytest.raises(gist_cache.GistCacheError, match=rf"{keys[0]}.k is F32 \[2, 1, 2, 8\], this model needs"):
        open_cache(gist, rewrite("heads", other_heads))
    half = {**right, f"{keys[1]}.v": torch.zeros(shape, dtype=torch.float16)}
    with pytest.raises(gist_cache.GistCacheError, match=rf"{keys[1]}.v is F16"):
        open_cache(gist, rewrite("half", half))
    missing = {name: t for name, t in right.items() if name != f"{keys[0]}.v"}
    with pytest.raises(gist_cache.GistCacheError, match="tensors do not match index.json: missing"):
        open_cache(gist, rewrite("missing", missing))
    with pytest.raises(gist_cache.GistCacheError, match="gists.safetensors: missing"):
        (copy_cache(gist[3], tmp_path / "gone") / gist_cache.TENSORS).unlink()
        open_cache(gist, tmp_path / "gone")


def test_gist_cli_reports_a_corrupt_cache_in_one_line(gist, tmp_path):
    directory = gist[0]
    path = copy_cache(gist[3], tmp_path / "cache", lambda i: _entry(i).update(prefix_len=-5))
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text(json.dumps({"instruction": "Say hello.", "input": "x"}) + "\n")
    one_error("-m", "megacompress.gist", "generate", "--model", str(directory), "--cache", str(path),
              "--inputs", str(inputs), "--out", str(tmp_path / "out.jsonl"), "--max-new-tokens", "2",
              expect="prefix_len -5")
    assert not (tmp_path / "out.jsonl").exists()


def test_import_hf_refuses_a_config_that_does_not_match_its_tensors(tmp_path):
    pytest.importorskip("transformers")
    hf = tmp_path / "hf"
    write_tiny_hf_llama(hf)
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config, "num_key_value_heads": 4}))
    one_error("tools/convert_checkpoint.py", "import-hf", str(hf), str(tmp_path / "out"),
              expect="model.layers.0.self_attn.k_proj.weight (16, 32), the config needs (32, 32)")
    (hf / "model.safetensors").write_bytes(b"\x00" * 64)
    one_error("tools/convert_checkpoint.py", "import-hf", str(hf), str(tmp_path / "out"),
              expect=f"{hf / 'model.safetensors'}: not a readable safetensors file")


def test_preprocess_refuses_an_output_prefix_under_a_file(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"text": "hello"}\n')
    (tmp_path / "somefile.txt").write_text("x")
    one_error("-m", "megacompress.data.preprocess", "--input", str(tmp_path / "in.jsonl"), "--tokenizer", "bytes",
              "--output-prefix", str(tmp_path / "somefile.txt" / "out"),
              expect=f"{tmp_path / 'somefile.txt'} is a file, not a directory")
    assert (tmp_path / "somefile.txt").read_text() == "x"


def test_bitstream_meta_and_m1_errors_name_the_file(tmp_path):
    from megacompress.methods.equal_info.m1 import M1, M1Error
    from megacompress.methods.equal_info.tokenizer import BitstreamTokenizer

    meta = tmp_path / "shard.meta.json"
    for text in ("[1]", '{"codec": {"scheme": "equal_info", "nonsense": 1}}', '{"codec": 5}',
                 '{"codec": {"scheme": "bytes"}, "m1": {"path": 1}}'):
        meta.write_text(text)
        with pytest.raises(ValueError, match="shard.meta.json: "):
            BitstreamTokenizer.from_meta_file(str(meta))
    m1 = save_tiny_m1(tmp_path / "m1")
    weights = m1 / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(os.urandom(len(good)))
    with pytest.raises(M1Error, match="model.safetensors: not a readable safetensors file"):
        M1(m1)
    meta.write_text(json.dumps({"codec": {"scheme": "equal_info"}, "counts": {}}))
    one_error("tools/decompress_corpus.py", "--input-prefix", str(tmp_path / "shard"),
              "--output", str(tmp_path / "out.jsonl"), "--m1", str(m1), expect="not a readable safetensors file")
    weights.write_bytes(good)
    config = json.loads((m1 / "config.json").read_text())
    (m1 / "config.json").write_text(json.dumps({**config, "num_kv_heads": 4}))  # weights made for 2
    with pytest.raises(M1Error, match=r"attn.qkv.weight \(64, 32\), the config needs \(96, 32\)"):
        M1(m1)
    meta.write_text(json.dumps({"codec": {"scheme": "equal_info", "rule": 3}, "counts": {}}))
    one_error("tools/decompress_corpus.py", "--input-prefix", str(tmp_path / "shard"),
              "--output", str(tmp_path / "out.jsonl"), expect=f"{meta}: unusable codec section")


def test_a_token_shard_meta_names_its_tokenizer_model_beside_the_shard(tmp_path):
    from megacompress.methods.equal_info.evaluate import shard_tokenizer

    meta = {"tokenizer": {"name": "sentencepiece", "model": "../../../../etc/passwd", "fingerprint": "0" * 64,
                          "vocab_size": 300}, "flags": {"append_eod": True}}
    (tmp_path / "shard.meta.json").write_text(json.dumps(meta))
    with pytest.raises(IntegrityError, match=r"shard.meta.json: '../../../../etc/passwd' points outside"):
        shard_tokenizer(str(tmp_path / "shard"))
