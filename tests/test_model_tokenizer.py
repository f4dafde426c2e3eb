"""A saved model records its tokenizer; generation uses it and refuses another (issue 13, part 6)."""

import json
import warnings

import pytest

from megacompress.data.tokenizers import (TOKENIZER_RECORD, build_tokenizer, check_model_tokenizer, model_tokenizer,
                                          save_tokenizer, train_sentencepiece)
from megacompress.training.convert import _save_run_tokenizer


@pytest.mark.parametrize("kind", ["gpt2", "bytes", "sentencepiece"])
def test_recorded_tokenizer_is_rebuilt_from_the_model_directory(tmp_path, kind):
    model_path = None
    if kind == "sentencepiece":
        (tmp_path / "corpus.txt").write_text("It is a truth universally acknowledged. " * 200)
        model_path = train_sentencepiece([str(tmp_path / "corpus.txt")], str(tmp_path / "sp"), vocab_size=300)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    _save_run_tokenizer({"kind": kind, "model_path": model_path or ""}, model_dir)  # what export does
    record = json.loads((model_dir / TOKENIZER_RECORD).read_text())
    original = build_tokenizer(kind, model_path)
    assert record["kind"] == kind and record["fingerprint"] == original.fingerprint()
    if model_path:
        (tmp_path / "sp.model").unlink()  # the copy in the model directory is what is used
    rebuilt = model_tokenizer(str(model_dir))
    assert rebuilt.fingerprint() == original.fingerprint()
    check_model_tokenizer(str(model_dir), rebuilt)


def test_a_different_tokenizer_is_refused(tmp_path):
    save_tokenizer(build_tokenizer("gpt2"), str(tmp_path))
    with pytest.raises(ValueError, match=r"--tokenizer bytes .* is not the tokenizer .* trained with \(gpt2"):
        check_model_tokenizer(str(tmp_path), build_tokenizer("bytes"))


def test_a_directory_without_a_record_assumes_gpt2_with_a_warning(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert model_tokenizer(str(tmp_path)).name == "gpt2"
    assert any("records no tokenizer" in str(w.message) for w in caught)


def test_generate_cli_uses_the_recorded_tokenizer_and_refuses_another(tmp_path):
    import subprocess
    import sys

    from distributed_helpers import REPO_ROOT, cpu_env

    from megacompress.models import GPT, ModelConfig, pretrained

    GPT(ModelConfig(vocab_size=259, hidden_size=32, num_layers=1, num_heads=2, ffn_hidden_size=64,
                    max_seq_len=32)).save_pretrained(tmp_path)
    save_tokenizer(build_tokenizer("bytes"), str(tmp_path))
    pretrained.seal(tmp_path)  # the tokenizer files are part of the directory, as export seals them

    def generate(*extra):
        return subprocess.run([sys.executable, "-m", "megacompress.generate", "--model", str(tmp_path), "--prompt",
                               "Hi", "--max-new-tokens", "3", *extra], cwd=REPO_ROOT, env=cpu_env(),
                              capture_output=True, text=True, timeout=120)

    ok = generate()
    assert ok.returncode == 0 and ok.stdout.startswith("=== prompt: 'Hi'"), ok.stderr[-2000:]
    for extra, message in ((["--tokenizer", "gpt2"], "is not the tokenizer"),
                           (["--max-new-tokens", "40"], "exceeds the model's max_seq_len 32")):
        bad = generate(*extra)
        errors = [line for line in bad.stderr.splitlines() if line.startswith("error: ")]
        assert bad.returncode == 2 and len(errors) == 1 and message in errors[0], bad.stderr[-2000:]
        assert "Traceback" not in bad.stderr
