"""OpenAI's byte-level BPE tokenizer and tokenize(), with identical ids."""

import functools
import gzip
import html
import itertools
import math
from collections.abc import Iterable
from pathlib import Path

import ftfy
import mindspore
import numpy as np
import regex

DEFAULT_BPE = Path(__file__).resolve().parent / "bpe_simple_vocab_16e6.txt.gz"
_WHITESPACE = regex.compile(r"\s+")
# Printable ASCII without '&', plus tab and newline: text that ftfy.fix_text and html.unescape keep.
_PLAIN = regex.compile(r"[\t\n -%'-~]*")


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """Map each byte to a printable unicode character, as GPT-2's byte-level BPE does."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    others = [b for b in range(256) if b not in bs]
    cs = bs + [256 + n for n in range(len(others))]
    return dict(zip(bs + others, map(chr, cs), strict=True))


def clean(text: str) -> str:
    """Normalise text as OpenAI does: ftfy, double HTML unescape, whitespace collapse, lowercase."""
    if not _PLAIN.fullmatch(text):
        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return _WHITESPACE.sub(" ", text.strip()).strip().lower()


class SimpleTokenizer:
    """Byte-level BPE over OpenAI's CLIP vocabulary of 49408 tokens."""

    def __init__(self, bpe_path: str | Path = DEFAULT_BPE):
        merges = gzip.decompress(Path(bpe_path).read_bytes()).decode("utf-8").split("\n")
        merges = [tuple(merge.split()) for merge in merges[1 : 49152 - 256 - 2 + 1]]
        vocab = list(bytes_to_unicode().values())
        vocab += [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = dict(enumerate(vocab))
        self.bpe_ranks = {merge: i for i, merge in enumerate(merges)}
        self.sot_token = self.encoder["<|startoftext|>"]
        self.eot_token = self.encoder["<|endoftext|>"]
        self.byte_table = str.maketrans({chr(b): c for b, c in bytes_to_unicode().items()})
        self.byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
        self.cache = {"<|startoftext|>": [self.sot_token], "<|endoftext|>": [self.eot_token]}
        self.pat = regex.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"""
            r"""[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    def bpe(self, token: str) -> list[str]:
        """Merge the byte-encoded characters of one pre-token into BPE symbols."""
        word = [*token[:-1], token[-1] + "</w>"]
        while len(word) > 1:
            pair = min(itertools.pairwise(word), key=lambda p: self.bpe_ranks.get(p, math.inf))
            if pair not in self.bpe_ranks:
                break
            first, second = pair
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == pair:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return word

    def encode(self, text: str) -> list[int]:
        """Token ids of a text, without start and end tokens."""
        ids = []
        for token in self.pat.findall(clean(text)):
            if token not in self.cache:
                chars = token.encode("utf-8").decode("latin-1").translate(self.byte_table)
                self.cache[token] = [self.encoder[s] for s in self.bpe(chars)]
            ids += self.cache[token]
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids; each end of word becomes a space."""
        text = "".join(self.decoder[int(i)] for i in ids)
        data = bytearray(self.byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").replace("</w>", " ")


@functools.cache
def _default_tokenizer() -> SimpleTokenizer:
    return SimpleTokenizer()


def tokenize(
    texts: str | list[str], context_length: int = 77, truncate: bool = False
) -> mindspore.Tensor:
    """Token ids of texts as an int32 Tensor (N, context_length): sot, ids, eot, zero padding."""
    if isinstance(texts, str):
        texts = [texts]
    elif not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a str or a list of str, got {type(texts).__name__}")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty; pass at least one string")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
    if not isinstance(context_length, int) or context_length < 2:
        raise ValueError(f"context_length must be an int >= 2 (sot + eot), got {context_length!r}")
    tokenizer = _default_tokenizer()
    result = np.zeros((len(texts), context_length), dtype=np.int32)
    for i, text in enumerate(texts):
        tokens = [tokenizer.sot_token, *tokenizer.encode(text), tokenizer.eot_token]
        if len(tokens) > context_length:
            if not truncate:
                shown = text if len(text) <= 80 else text[:60] + "..." + text[-10:]
                raise RuntimeError(
                    f"Input {shown!r} is too long for context length {context_length} "
                    f"({len(tokens)} tokens); pass truncate=True to cut it"
                )
            tokens = tokens[:context_length]
            tokens[-1] = tokenizer.eot_token
        result[i, : len(tokens)] = tokens
    return mindspore.Tensor(result)
