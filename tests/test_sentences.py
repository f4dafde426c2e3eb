"""Sentence splitting: lossless on all bundled text and on random text; sensible boundaries; saved models."""

import json
import pickle
import re

import pytest
from distributed_helpers import REPO_ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from megacompress.data.sentences import SentenceModelError, SentenceSplitter, sentence_model_digest, split_sentences


def _sample_texts():
    for path in sorted((REPO_ROOT / "data/sample").glob("*.jsonl")):
        for line in open(path):
            yield json.loads(line)["text"]


def _training_texts():
    return [t[:10_000] for t in list(_sample_texts())[::20]]


@pytest.fixture(scope="module")
def trained():
    return SentenceSplitter.train(_training_texts())


def test_lossless_on_bundled_text(trained):
    n = 0
    for text in _sample_texts():
        pieces = trained.split(text)
        assert "".join(pieces) == text
        assert all(p.strip() for p in pieces)
        n += len(pieces)
    assert n > 10_000  # the sample has tens of thousands of sentences


@settings(max_examples=120, deadline=None)
@given(
    st.lists(st.sampled_from(list("ab .!?\"')\n\tMr") + ["Mr.", "\n\n", "e.g.", "é", " The"]), max_size=60).map("".join)
    | st.text(max_size=80)
)
def test_lossless_property(text):
    pieces = split_sentences(text)
    assert "".join(pieces) == text
    assert all(pieces)
    assert len(pieces) <= 1 or all(p.strip() for p in pieces)


def test_abbreviations_and_whitespace_rule():
    text = "  Mr. Darcy bowed. Mrs. Bennet smiled, e.g. warmly.  It rained!\n"
    assert split_sentences(text) == ["  Mr. Darcy bowed.", " Mrs. Bennet smiled, e.g. warmly.", "  It rained!\n"]


def test_blank_lines_split_headings():
    text = "Chapter 1\n\nIt is a truth universally acknowledged.\n  \nFirst Citizen:\nSpeak, speak."
    assert split_sentences(text) == [
        "Chapter 1",
        "\n\nIt is a truth universally acknowledged.",
        "\n  \nFirst Citizen:\nSpeak, speak.",
    ]


def test_edge_cases():
    assert split_sentences("") == []
    assert split_sentences("   \n\n ") == ["   \n\n "]
    assert split_sentences("No end") == ["No end"]


def test_trained_params_pickle_and_are_deterministic(trained):
    texts = _training_texts()
    again = SentenceSplitter.train(texts)
    shipped = SentenceSplitter(pickle.loads(pickle.dumps(trained.params)))
    sample = texts[-1]
    assert again.split(sample) == trained.split(sample) == shipped.split(sample)


def test_saved_model_round_trips_through_json(trained, tmp_path):
    path = tmp_path / "m.sentences.json"
    path.write_text(trained.to_json())
    loaded = SentenceSplitter.load(str(path))
    assert loaded.to_json() == trained.to_json()  # canonical: the same digest after a reload
    assert sentence_model_digest(loaded.to_json()) == sentence_model_digest(path.read_text())
    for text in _training_texts()[:5]:
        assert loaded.split(text) == trained.split(text)
    json.loads(path.read_text())  # plain JSON, no pickle


@pytest.mark.parametrize("content, message", [
    (b"[1, 2", "invalid sentence model JSON"),
    (b"\xff\xfe", "invalid sentence model JSON"),
    (b'{"format": "other"}', "not a sentence model"),
    (b'{"format": "megacompress-punkt", "version": 9}', "unsupported sentence model version 9"),
    (b'{"format": "megacompress-punkt", "version": 1, "abbrev_types": [], "sent_starters": [], '
     b'"collocations": [["a"]], "ortho_context": {}}', '"collocations" must be a list of [str, str] pairs'),
    (b'{"format": "megacompress-punkt", "version": 1, "abbrev_types": [], "sent_starters": [], '
     b'"collocations": [], "ortho_context": {"a": -1}}', '"ortho_context" must be an object'),
])
def test_invalid_saved_model_names_the_file(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(SentenceModelError, match=re.escape(f"{path}: {message}")):
        SentenceSplitter.load(str(path))
    with pytest.raises(SentenceModelError, match="does not exist"):
        SentenceSplitter.load(str(tmp_path / "missing.json"))
