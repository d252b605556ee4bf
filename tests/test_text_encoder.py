"""Prompts -> T5 features (vidq_jax/text_encoder.py): tokenization, encoding, weight-only int8, errors."""

import sys

import jax
import numpy as np
import pytest

from tests.tiny_release import make_release, write_tokenizer
from vidq_jax.errors import VidqError
from vidq_jax.text_encoder import load_text_encoder, load_tokenizer, quantize_text_encoder


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_release(tmp_path_factory.mktemp("rel"), ("text_encoder", "tokenizer"))


@pytest.fixture(scope="module")
def encoder(release):
    return load_text_encoder(release / "text_encoder", release / "tokenizer", max_length=8)


def test_tokenizer_pads_truncates_and_ends_with_eos(release):
    tok = load_tokenizer(release / "tokenizer")
    ids, mask = tok(["a cat", "a photo of an astronaut riding horse on the moon", ""], 6)
    assert ids.dtype == np.int32 and ids.shape == mask.shape == (3, 6)
    assert list(ids[0]) == [3, 13, 1, 0, 0, 0] and list(mask[0]) == [1, 1, 1, 0, 0, 0]
    assert list(ids[1]) == [3, 4, 5, 6, 7, 1] and mask[1].all()  # truncated to max_length - 1, then EOS
    assert list(ids[2]) == [1, 0, 0, 0, 0, 0] and list(mask[2]) == [1, 0, 0, 0, 0, 0]  # T5(""): EOS alone


def test_encode_is_the_encoder_on_the_lowercased_tokens(encoder):
    y, mask = encoder.encode(["  A Cat sits ", "red dog", ""])
    assert y.shape == (3, 8, 32) and y.dtype == np.float32 and mask.shape == (3, 8)
    assert list(np.asarray(mask).sum(1)) == [4, 3, 1]
    ids, m = encoder.tokenize(["a cat sits", "red dog", ""])
    np.testing.assert_array_equal(np.asarray(mask), m)
    assert list(ids[0, :4]) == [3, 13, 17, 1]
    np.testing.assert_array_equal(np.asarray(encoder.encode(["a cat sits", "red dog", ""])[0]), np.asarray(y))
    np.testing.assert_array_equal(np.asarray(encoder.encode(["A Cat sits", "red dog", ""], lowercase=False)[1])[0],
                                  [1, 1, 1, 1, 0, 0, 0, 0])  # "A", "Cat": unknown words


def test_w8_only_quantizes_every_linear_without_calibration(encoder):
    from vidq_jax.quant import quantization_summary

    q = quantize_text_encoder(encoder.model, encoder.params, "w8-only")
    summary = quantization_summary(q)
    assert len(summary) == 14 and all(s.startswith("W8A16") for s in summary.values())
    prompts = ["a cat sits on the mat", "red dog", ""]
    ref = np.asarray(encoder.encode(prompts)[0])
    out = np.asarray(type(encoder)(encoder.tokenizer, encoder.model, q, 8).encode(prompts)[0])
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 2e-2
    with pytest.raises(VidqError, match="weight-only preset such as 'w8-only'"):
        quantize_text_encoder(encoder.model, encoder.params, "viditq-w8a8")


def test_sentencepiece_model(tmp_path, encoder):
    spm = pytest.importorskip("sentencepiece")
    import io

    model = io.BytesIO()
    text = ["a cat sits on the mat", "a red dog in the garden", "a robot reading a book"] * 20
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=model, vocab_size=20,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    (tmp_path / "spiece.model").write_bytes(model.getvalue())
    tok = load_tokenizer(tmp_path)
    ids, mask = tok(["a cat sits", "a robot reading a book in the garden"], 5)
    assert ids[0, int(mask[0].sum()) - 1] == 1 and ids.max() < 20 and mask[1].all() and ids[1, -1] == 1


def test_errors_name_the_part(tmp_path, release, monkeypatch, encoder):
    with pytest.raises(VidqError, match="holds none of tokenizer.json, spiece.model"):
        load_tokenizer(tmp_path)
    with pytest.raises(VidqError, match="no such file or folder"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(VidqError, match="not a readable tokenizer.json"):
        load_tokenizer(tmp_path)
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(VidqError, match=r"pip install 'vidq-jax\[generate\]'"):
        load_tokenizer(release / "tokenizer")
    monkeypatch.undo()
    big = write_tokenizer(tmp_path / "big")
    import tokenizers

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "cat": 500}
    tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>")).save(str(big / "tokenizer.json"))
    encoder2 = type(encoder)(load_tokenizer(big), encoder.model, encoder.params, 8)
    with pytest.raises(VidqError, match="outside the text encoder's vocabulary of 128"):
        encoder2.encode(["cat"])
    with pytest.raises(VidqError, match="max_length=0"):
        encoder.tokenizer(["a"], 0)
