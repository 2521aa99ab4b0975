"""Examples, JSONL I/O and batches with prompt masks.

A sequence χ = [x; y] is a prompt x followed by a response y (EOS appended to y). The model reads
``idx = χ[:-1]`` and is scored on ``targets = χ[1:]``, where every target that is still part of the prompt, and
every padding position, is −100 (ignored). So ``targets[b, t]`` is the token that position t must predict, and
the positions with ``targets != -100`` are exactly the response positions the dynamics engine talks about.

Data sources expose one method, ``batch(step) -> Batch``: the batch is a pure function of (seed, step), so a run
resumed from a checkpoint sees exactly the batches the uninterrupted run would have seen.

Preference pairs (x, y⁺, y⁻) and their reference log-probs live in :mod:`tinyld.preference`: this module never
runs a model.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from tinyld.runtime import TinyldError, check_int, check_seed, write_text_atomic
from tinyld.tokenizers import fingerprint

IGNORE = -100  # label of a position that carries no loss (prompt or padding)


@dataclass
class Example:
    """One prompt with its preferred response and, for preference data, a rejected one."""

    prompt: str
    chosen: str  # y⁺ (the SFT target)
    rejected: str | None = None  # y⁻ (preference data only)
    meta: dict = field(default_factory=dict)  # anything else: entity, relation, split…


@dataclass
class Batch:
    idx: torch.Tensor  # (B, T) input token ids
    targets: torch.Tensor  # (B, T) next-token ids, IGNORE where no loss
    tok: str | None = None  # fingerprint of the tokenizer that built it (tokenizers.fingerprint); None: unknown

    def __post_init__(self):
        for name, t in (("idx", self.idx), ("targets", self.targets)):
            if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.is_floating_point() or t.is_complex():
                what = f"shape {tuple(t.shape)} dtype {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
                raise TinyldError(f"Batch.{name} must be a (B, T) tensor of integer token ids, got {what}")
        if self.idx.shape != self.targets.shape:
            raise TinyldError(f"mismatched batch: idx has shape {tuple(self.idx.shape)} but targets has "
                              f"{tuple(self.targets.shape)}; both must be (B, T)")
        bad = (self.targets < 0) & (self.targets != IGNORE)
        if bool(bad.any()):
            raise TinyldError(f"targets hold {int(self.targets[bad][0])}: a target is a token id ≥ 0, or {IGNORE} "
                              "where no loss is taken")

    def to(self, device) -> "Batch":
        return Batch(self.idx.to(device), self.targets.to(device), self.tok)

    @property
    def mask(self) -> torch.Tensor:
        return self.targets != IGNORE  # (B, T) True at scored (response) positions


def encode_example(tok, prompt: str, response: str | None, append_eos: bool = True) -> tuple[list[int], int]:
    """Token ids of χ = [x; y (+EOS)] and the prompt length |x|. A space joins x and y, as in running text."""
    if response is None:
        raise TinyldError(f"prompt {prompt[:40]!r} has no response: every example needs a non-empty response")
    if not response.strip():
        raise TinyldError(f"empty response for prompt {prompt[:40]!r}: a response must contain at least one "
                          "token before the EOS that is appended")
    x = tok.encode(prompt)
    sep = " " if prompt and not prompt[-1].isspace() and not response[0].isspace() else ""
    y = tok.encode(sep + response) + ([tok.eos_id] if append_eos else [])
    return x + y, len(x)


def make_batch(tok, prompts: Sequence[str], responses: Sequence[str | None], block_size: int | None = None,
               append_eos: bool = True) -> Batch:
    """Right-padded batch of prompt+response pairs, prompt and padding masked with IGNORE."""
    if isinstance(prompts, str) or isinstance(responses, str):
        raise TinyldError("make_batch takes lists of prompts and responses, not single strings: wrap them in [ ]")
    if not callable(getattr(tok, "encode", None)) or not hasattr(tok, "pad_id"):
        raise TinyldError(f"make_batch's first argument is the tokenizer, got {type(tok).__name__}")
    prompts, responses = list(prompts), list(responses)
    if block_size is not None:
        check_int("block_size", block_size, 1)
    if len(prompts) != len(responses):
        raise TinyldError(f"mismatched batch lengths: {len(prompts)} prompts but {len(responses)} responses")
    if not prompts:
        raise TinyldError("empty batch: give at least one (prompt, response) pair")
    for i, (p, r) in enumerate(zip(prompts, responses)):
        if not isinstance(p, str) or not (r is None or isinstance(r, str)):
            raise TinyldError(f"pair {i}: prompts and responses must be strings, got {type(p).__name__} and "
                              f"{type(r).__name__}")
    seqs = [encode_example(tok, p, r, append_eos) for p, r in zip(prompts, responses)]
    return collate(seqs, tok.pad_id, block_size, fingerprint(tok))


def collate(seqs: Sequence[tuple[list[int], int]], pad_id: int, block_size: int | None = None,
            tok: str | None = None) -> Batch:
    """[(ids of χ, prompt length)] → Batch. Sequences are right-padded; the model is causal, so padding after
    a sequence never changes its logits."""
    if not seqs:
        raise TinyldError("empty batch: give at least one sequence")
    T = max(len(s) for s, _ in seqs) - 1
    if block_size is not None and T > block_size:
        i = max(range(len(seqs)), key=lambda j: len(seqs[j][0]))
        raise TinyldError(f"example {i} has {T + 1} tokens: the model reads {T} of them but its context is "
                          f"block_size={block_size}; shorten the prompt/response or use a larger block_size")
    idx = torch.full((len(seqs), T), pad_id, dtype=torch.long)  # (B, T)
    targets = torch.full((len(seqs), T), IGNORE, dtype=torch.long)  # (B, T)
    for b, (s, n_prompt) in enumerate(seqs):
        if n_prompt < 1:
            raise TinyldError(f"example {b} has an empty prompt: the first response token needs a position "
                              "to be predicted from (start prompts with at least one token)")
        s = torch.tensor(s, dtype=torch.long)
        idx[b, : len(s) - 1] = s[:-1]
        targets[b, n_prompt - 1: len(s) - 1] = s[n_prompt:]  # position t predicts token t+1
    return Batch(idx, targets, tok)


def jsonl_objects(path: str | Path) -> list[tuple[str, dict]]:
    """Every non-blank line of a JSONL file as ``("file:line", object)``. A line that is not UTF-8, not JSON or
    not a JSON object is an error that names the file and the line; nothing half-read is returned."""
    if not isinstance(path, (str, os.PathLike)):
        raise TinyldError(f"a JSONL reader needs a file path, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise TinyldError(f"no JSONL file at {path}" + (" (it is a folder)" if path.is_dir() else "") +
                          ": check the path")
    out = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            where = f"{path}:{n}"
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")  # a byte-order mark is no content
            except UnicodeDecodeError as e:
                raise TinyldError(f"{where}: not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                                  "save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                d = json.loads(line, object_pairs_hook=_no_repeats)
            except _Repeated as e:
                raise TinyldError(f"{where}: the key {e.args[0]!r} appears twice; give each key once") from None
            except json.JSONDecodeError as e:
                raise TinyldError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            except (ValueError, RecursionError) as e:  # absurdly deep nesting or huge numbers
                raise TinyldError(f"{where}: JSON that cannot be read ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:80]})") from None
            if not isinstance(d, dict):
                raise TinyldError(f"{where}: each line must be a JSON object like "
                                  f'{{"prompt": …, "chosen": …}}, got a {type(d).__name__}')
            out.append((where, d))
    if not out:
        raise TinyldError(f"{path} holds no examples (every line is blank)")
    return out


class _Repeated(ValueError):
    """A JSON object that gives one key twice (json keeps the last silently)."""


def _no_repeats(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    for k in keys:
        if keys.count(k) > 1:
            raise _Repeated(k)
    return dict(pairs)


def read_jsonl(path: str | Path) -> list[Example]:
    """Read ``{"prompt", "chosen" (or "response"), "rejected"?, …}`` lines into Examples.

    Every bad line is an error that names the file and the line: not UTF-8, not JSON, not an object, a missing or
    empty prompt or response, a value that is not a string. Nothing half-read is returned."""
    out = []
    for where, d in jsonl_objects(path):
        if "prompt" not in d:
            raise TinyldError(f"{where}: missing 'prompt'")
        if "chosen" in d and "response" in d:
            raise TinyldError(f"{where}: both 'chosen' and 'response' given; keep one")
        chosen = d.pop("chosen", d.pop("response", None))
        if chosen is None:
            raise TinyldError(f"{where}: prompt with no response: add a non-empty 'chosen' or 'response'")
        rejected = d.pop("rejected", None)
        for key, v in (("prompt", d["prompt"]), ("chosen", chosen), ("rejected", rejected)):
            if v is None and key == "rejected":
                continue
            if not isinstance(v, str):
                raise TinyldError(f"{where}: '{key}' must be a string, got {type(v).__name__} {v!r:.40}")
            if not v.strip():
                raise TinyldError(f"{where}: '{key}' is empty; every prompt and response needs text")
        out.append(Example(d.pop("prompt"), chosen, rejected, d))
    return out


def write_jsonl(path: str | Path, examples: Sequence[Example]) -> None:
    """Write Examples as JSON lines. Everything is checked and encoded first, then written atomically, so a bad
    example never leaves a half-written file."""
    examples = list(examples)
    if not all(isinstance(e, Example) for e in examples):
        raise TinyldError("write_jsonl takes a list of Example objects")
    lines = []
    for n, e in enumerate(examples, 1):
        d = {"prompt": e.prompt, "chosen": e.chosen, **({"rejected": e.rejected} if e.rejected else {}), **e.meta}
        try:
            lines.append(json.dumps(d) + "\n")
        except (TypeError, ValueError) as err:
            raise TinyldError(f"example {n} cannot be written as JSON ({err}); nothing was written") from None
    write_text_atomic(path, "".join(lines))


def seeded_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


class TextStream:
    """Pretraining data: documents joined by EOS into one token stream; each batch is random windows."""

    def __init__(self, tok, docs: Sequence[str], block_size: int, batch_size: int, seed: int = 0):
        check_int("TextStream.block_size", block_size, 1)
        check_int("TextStream.batch_size", batch_size, 1)
        check_seed("TextStream.seed", seed)
        if isinstance(docs, str) or docs is None:
            raise TinyldError("TextStream takes a list of documents (strings), not one string")
        docs = list(docs)
        if not all(isinstance(d, str) for d in docs):
            raise TinyldError("TextStream takes a list of documents (strings)")
        ids = []
        for d in docs:
            ids += tok.encode(d) + [tok.eos_id]
        self.tokens = torch.tensor(ids, dtype=torch.long)  # (N,)
        if len(self.tokens) < block_size + 2:
            raise TinyldError(f"pretraining text has {len(self.tokens)} tokens; windows of block_size={block_size} "
                              f"need at least {block_size + 2}: add text or lower block_size")
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self.tok = fingerprint(tok)

    def identity(self) -> dict:
        """What a checkpoint remembers about this data, so a resume can check it is the same."""
        tokens = hashlib.sha1(self.tokens.numpy().tobytes()).hexdigest()[:16]
        return {"kind": "text", "tokenizer": self.tok, "block_size": self.block_size,
                "batch_size": self.batch_size, "seed": self.seed, "tokens": tokens}

    def batch(self, step: int) -> Batch:
        T = self.block_size
        start = torch.randint(0, len(self.tokens) - T - 1, (self.batch_size,),
                              generator=seeded_generator(self.seed, step))
        win = torch.stack([self.tokens[s: s + T + 1] for s in start.tolist()])  # (B, T+1)
        return Batch(win[:, :-1], win[:, 1:], self.tok)


class PairData:
    """SFT data: (prompt, response) pairs shuffled once per epoch (seeded), cut into batches."""

    def __init__(self, tok, examples: Sequence[Example], batch_size: int, block_size: int | None = None,
                 seed: int = 0):
        examples = list(examples) if examples is not None else []
        if not examples:
            raise TinyldError("no examples: SFT needs at least one (prompt, response) pair")
        check_int("PairData.batch_size", batch_size, 1)
        check_seed("PairData.seed", seed)
        if block_size is not None:
            check_int("PairData.block_size", block_size, 1)
        if not all(isinstance(e, Example) for e in examples):
            raise TinyldError("PairData takes a list of Example objects (data.Example or read_jsonl's output)")
        for n, e in enumerate(examples):
            if not isinstance(e.prompt, str) or not isinstance(e.chosen, str):
                raise TinyldError(f"example {n}: prompt and chosen must be strings, got {type(e.prompt).__name__} "
                                  f"and {type(e.chosen).__name__}")
        self.seqs = [encode_example(tok, e.prompt, e.chosen) for e in examples]
        collate(self.seqs, tok.pad_id, block_size)  # validate every length once, up front
        self.tok, self.block_size, self.seed, self.fp = tok, block_size, seed, fingerprint(tok)
        self.batch_size = min(batch_size, len(self.seqs))
        self.batches_per_epoch = len(self.seqs) // self.batch_size

    def identity(self) -> dict:
        """What a checkpoint remembers about this data, so a resume can check it is the same."""
        return {"kind": "pairs", "tokenizer": self.fp, "block_size": self.block_size,
                "batch_size": self.batch_size, "seed": self.seed, "examples": digest(self.seqs)}

    def indices(self, step: int) -> list[int]:
        """Which examples (positions in the list given) make up the batch of ``step``."""
        epoch, i = divmod(step, self.batches_per_epoch)
        order = torch.randperm(len(self.seqs), generator=seeded_generator(self.seed, epoch)).tolist()
        return order[i * self.batch_size: (i + 1) * self.batch_size]

    def batch(self, step: int) -> Batch:
        return collate([self.seqs[j] for j in self.indices(step)], self.tok.pad_id, self.block_size, self.fp)


def digest(obj) -> str:
    """A short hash of token ids (a list, or a list of (ids, prompt length) pairs)."""
    return hashlib.sha1(json.dumps(obj, separators=(",", ":")).encode()).hexdigest()[:16]
