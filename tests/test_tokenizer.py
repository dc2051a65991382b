"""Tokenizer against OpenAI's ids, recorded in fixtures/tokens.json by gen_tokens.py."""

import json
from pathlib import Path

import mindspore
import numpy as np
import pytest

from clip.tokenizer import SimpleTokenizer, tokenize

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "tokens.json").read_text())
CASES = FIXTURE["cases"]
TEXTS = [case["text"] for case in CASES]


def expected(key: str, cases: list[dict]) -> np.ndarray:
    """OpenAI's tokenize() rows for the cases at one context length, zero padded."""
    n = int(key.rstrip("t"))
    out = np.zeros((len(cases), n), dtype=np.int32)
    for i, case in enumerate(cases):
        row = FIXTURE["rows"][case[key]]
        out[i, : len(row)] = row
    return out


@pytest.fixture(scope="module")
def tokenizer() -> SimpleTokenizer:
    return SimpleTokenizer()


def test_vocabulary(tokenizer):
    assert len(tokenizer.encoder) == FIXTURE["vocab_size"] == 49408
    assert (tokenizer.sot_token, tokenizer.eot_token) == (49406, 49407)
    assert tokenizer.encoder["<|startoftext|>"] == 49406


def test_encode_matches_openai(tokenizer):
    mismatched = [case["text"] for case in CASES if tokenizer.encode(case["text"]) != case["ids"]]
    assert not mismatched
    assert len({len(case["ids"]) for case in CASES}) > 50


@pytest.mark.parametrize("n", FIXTURE["contexts"])
def test_tokenize_truncated_matches_openai(n):
    tokens = tokenize(TEXTS, context_length=n, truncate=True)
    assert isinstance(tokens, mindspore.Tensor)
    assert tokens.dtype == mindspore.int32 and tokens.shape == (len(TEXTS), n)
    rows = tokens.asnumpy()
    np.testing.assert_array_equal(rows, expected(f"{n}t", CASES))
    cut = [i for i, case in enumerate(CASES) if case[str(n)] is None]
    assert cut and (rows[cut, -1] == 49407).all()


@pytest.mark.parametrize("n", FIXTURE["contexts"])
def test_tokenize_matches_openai(n):
    fits = [case for case in CASES if case[str(n)] is not None]
    tokens = tokenize([case["text"] for case in fits], context_length=n)
    assert tokens.dtype == mindspore.int32 and tokens.shape == (len(fits), n)
    rows = tokens.asnumpy()
    np.testing.assert_array_equal(rows, expected(str(n), fits))
    lengths = np.array([len(FIXTURE["rows"][case[str(n)]]) for case in fits])
    assert (rows[np.arange(len(fits)), lengths - 1] == 49407).all() and lengths.max() == n


@pytest.mark.parametrize("n", FIXTURE["contexts"])
def test_too_long_raises(n):
    too_long = [case["text"] for case in CASES if case[str(n)] is None]
    assert too_long
    for text in too_long:
        with pytest.raises(RuntimeError, match=f"context length {n}.*truncate=True"):
            tokenize(text, context_length=n)


def test_too_long_message_is_short():
    with pytest.raises(RuntimeError) as info:
        tokenize(["a cat", "word " * 10000])
    assert "word word" in str(info.value) and len(str(info.value)) < 300


def test_single_string_and_default_context():
    tokens = tokenize("a photo of a cat.")
    case = CASES[TEXTS.index("a photo of a cat.")]
    assert tokens.shape == (1, 77)
    np.testing.assert_array_equal(tokens.asnumpy(), expected("77", [case]))


def test_decode_matches_openai(tokenizer):
    assert [tokenizer.decode(case["ids"]) for case in CASES] == [case["decode"] for case in CASES]
    for row, text in FIXTURE["decode_rows"]:
        assert tokenizer.decode(row) == text
    assert tokenizer.decode(np.array([320, 1125, 539, 320, 2368, 269])) == "a photo of a cat . "


@pytest.mark.parametrize(
    ("texts", "kwargs", "error", "message"),
    [
        ([], {}, ValueError, "empty"),
        (["a", 3], {}, TypeError, r"texts\[1\].*int"),
        (["a", b"b"], {}, TypeError, r"texts\[1\].*bytes"),
        (5, {}, TypeError, "str or a list of str"),
        ("a", {"context_length": 1}, ValueError, "context_length"),
        ("a", {"context_length": 77.0}, ValueError, "context_length"),
    ],
)
def test_bad_input(texts, kwargs, error, message):
    with pytest.raises(error, match=message):
        tokenize(texts, **kwargs)


def test_smallest_context():
    np.testing.assert_array_equal(
        tokenize(["", "a cat"], context_length=2, truncate=True).asnumpy(),
        [[49406, 49407], [49406, 49407]],
    )
