"""Examples, JSONL I/O and batches with prompt masks.

A sequence χ = [x; y] is a prompt x followed by a response y (EOS appended to y). The model reads
``idx = χ[:-1]`` and is scored on ``targets = χ[1:]``, where every target that is still part of the prompt, and
every padding position, is −100 (ignored). So ``targets[b, t]`` is the token that position t must predict, and
the positions with ``targets != -100`` are exactly the response positions the dynamics engine talks about.

Data sources expose one method, ``batch(step) -> Batch``: the batch is a pure function of (seed, step), so a run
resumed from a checkpoint sees exactly the batches the uninterrupted run would have seen.
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
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise TinyldError(f"{where}: not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                                  "save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                d = json.loads(line)
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


def _generator(seed: int, step: int) -> torch.Generator:
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
        digest = hashlib.sha1(self.tokens.numpy().tobytes()).hexdigest()[:16]
        return {"kind": "text", "tokenizer": self.tok, "block_size": self.block_size,
                "batch_size": self.batch_size, "seed": self.seed, "tokens": digest}

    def batch(self, step: int) -> Batch:
        T = self.block_size
        start = torch.randint(0, len(self.tokens) - T - 1, (self.batch_size,), generator=_generator(self.seed, step))
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
                "batch_size": self.batch_size, "seed": self.seed, "examples": _digest(self.seqs)}

    def indices(self, step: int) -> list[int]:
        """Which examples (positions in the list given) make up the batch of ``step``."""
        epoch, i = divmod(step, self.batches_per_epoch)
        order = torch.randperm(len(self.seqs), generator=_generator(self.seed, epoch)).tolist()
        return order[i * self.batch_size: (i + 1) * self.batch_size]

    def batch(self, step: int) -> Batch:
        return collate([self.seqs[j] for j in self.indices(step)], self.tok.pad_id, self.block_size, self.fp)


def _digest(obj) -> str:
    """A short hash of token ids (a list, or a list of (ids, prompt length) pairs)."""
    return hashlib.sha1(json.dumps(obj, separators=(",", ":")).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------------
# Preference data: (x, y⁺, y⁻) pairs and the reference log-probs, computed once
# ---------------------------------------------------------------------------------------------------------------


def _pair_seqs(tok, examples: Sequence[Example], what: str,
               block_size: int | None = None) -> list[tuple[tuple[list[int], int], ...]]:
    """Encoded (chosen, rejected) of every example. A missing, empty, non-string or too long response, an empty
    prompt, and a pair whose two responses encode to the same tokens are errors that name the example."""
    if not callable(getattr(tok, "encode", None)) or not hasattr(tok, "pad_id"):
        raise TinyldError(f"{what} needs a tinyld tokenizer first (WordTokenizer, GPT2BPE), got {type(tok).__name__}")
    if isinstance(examples, (Example, str)) or not hasattr(examples, "__iter__"):
        raise TinyldError(f"{what} takes a list of Example objects, got {type(examples).__name__} (wrap one in [ ])")
    examples = list(examples)
    if not examples:
        raise TinyldError(f"{what}: no examples; preference data needs at least one (prompt, chosen, rejected)")
    if not all(isinstance(e, Example) for e in examples):
        raise TinyldError(f"{what} takes a list of Example objects (data.Example or read_jsonl's output)")
    out = []
    for n, e in enumerate(examples):
        if e.rejected is None:
            raise TinyldError(f"example {n} ({str(e.prompt)[:40]!r}) has no rejected response: preference data needs "
                              "one 'rejected' per prompt")
        for key in ("prompt", "chosen", "rejected"):
            v = getattr(e, key)
            if not isinstance(v, str):
                raise TinyldError(f"example {n}: {key} must be a string, got {type(v).__name__} {v!r:.40}")
            if key != "prompt" and not v.strip():
                raise TinyldError(f"example {n} ({e.prompt[:40]!r}): the {key} response is empty; every response "
                                  "needs at least one token before the EOS that is appended")
        pair = tuple(encode_example(tok, e.prompt, y) for y in (e.chosen, e.rejected))
        for key, (ids, n_prompt) in zip(("chosen", "rejected"), pair):
            if n_prompt < 1:
                raise TinyldError(f"example {n} has an empty prompt: the first response token needs a position to "
                                  "be predicted from")
            if block_size is not None and len(ids) - 1 > block_size:
                raise TinyldError(f"example {n} ({key}) has {len(ids)} tokens: the model reads {len(ids) - 1} of them "
                                  f"but its context is block_size={block_size}; shorten it or use a larger model")
        if pair[0] == pair[1]:
            same = "the same text" if e.chosen == e.rejected else "texts that encode to the same tokens"
            raise TinyldError(f"example {n} ({e.prompt[:40]!r}): chosen and rejected are {same} "
                              f"({e.chosen[:40]!r}), so the pair prefers nothing; drop it or fix the rejected answer")
        out.append(pair)
    return out


@dataclass
class PrefBatch:
    """B preference pairs in one batch of 2B sequences: rows 0…B−1 are the chosen responses, rows B…2B−1 the
    rejected ones, so one forward pass scores both. ``ref_c``/``ref_r`` (B,) are the reference's summed log-probs."""

    seqs: Batch  # (2B, T)
    ref_c: torch.Tensor  # (B,) log π_ref(y⁺|x)
    ref_r: torch.Tensor  # (B,) log π_ref(y⁻|x)
    index: list[int] = field(default_factory=list)  # which pairs of the data source

    @property
    def n_pairs(self) -> int:
        return self.ref_c.shape[0]

    def to(self, device) -> "PrefBatch":
        return PrefBatch(self.seqs.to(device), self.ref_c.to(device), self.ref_r.to(device), self.index)


@dataclass
class Reference:
    """log π_ref(y⁺|x) and log π_ref(y⁻|x) (summed over the response, EOS included) for every pair of a preference
    data set, computed once in batched no-grad passes (:meth:`compute`), never by a second model in the loop.
    It remembers the tokenizer and the pairs it was computed on, and :class:`PreferenceData` checks both."""

    chosen: torch.Tensor  # (N,) float64
    rejected: torch.Tensor  # (N,) float64
    tok: str  # tokenizer fingerprint
    pairs: str  # digest of the encoded pairs

    @classmethod
    @torch.no_grad()
    def compute(cls, model, tok, examples: Sequence[Example], batch_size: int = 64) -> "Reference":
        from tinyld.losses import sequence_logprob

        check_int("Reference batch_size", batch_size, 1)
        if not isinstance(model, torch.nn.Module) or not hasattr(getattr(model, "config", None), "vocab_size"):
            raise TinyldError(f"Reference.compute needs the reference model (a tinyld GPT) first, got "
                              f"{type(model).__name__}")
        if not hasattr(tok, "vocab_size"):
            raise TinyldError(f"Reference.compute needs a tinyld tokenizer second, got {type(tok).__name__}")
        if getattr(model.config, "vocab_size", None) != tok.vocab_size:
            raise TinyldError(f"the reference model has vocab_size {model.config.vocab_size} but the tokenizer has "
                              f"{tok.vocab_size}: compute the reference with the tokenizer the model was trained with")
        pairs = _pair_seqs(tok, examples, "Reference.compute", model.config.block_size)
        seqs = [s for pair in pairs for s in pair]  # c0, r0, c1, r1, …
        was = model.training
        model.eval()
        dev = next(model.parameters()).device
        out = []
        for i in range(0, len(seqs), 2 * batch_size):
            b = collate(seqs[i:i + 2 * batch_size], tok.pad_id, model.config.block_size).to(dev)
            out.append(sequence_logprob(model(b.idx), b.targets).double().cpu())
        model.train(was)
        lp = torch.cat(out)  # (2N,)
        if not torch.isfinite(lp).all():
            raise TinyldError("the reference model gives non-finite log-probs: it has diverged; use a healthy model")
        return cls(lp[0::2].clone(), lp[1::2].clone(), fingerprint(tok), _digest(pairs))


class PreferenceData:
    """DPO data: (x, y⁺, y⁻) pairs shuffled once per epoch (seeded), cut into :class:`PrefBatch` es. ``reference``
    (from :meth:`Reference.compute` on the same examples and tokenizer) is required by every loss except SimPO."""

    def __init__(self, tok, examples: Sequence[Example], batch_size: int, block_size: int | None = None,
                 seed: int = 0, reference: Reference | None = None):
        check_int("PreferenceData.batch_size", batch_size, 1)
        check_seed("PreferenceData.seed", seed)
        if block_size is not None:
            check_int("PreferenceData.block_size", block_size, 1)
        self.pairs = _pair_seqs(tok, examples, "PreferenceData", block_size)  # every length checked, up front
        self.tok, self.block_size, self.seed, self.fp = tok, block_size, seed, fingerprint(tok)
        if reference is not None:
            if not isinstance(reference, Reference):
                raise TinyldError(f"reference must be a data.Reference (Reference.compute(ref_model, tok, examples)), "
                                  f"got {type(reference).__name__}")
            if reference.tok != self.fp:
                raise TinyldError(f"the reference log-probs were computed with another tokenizer ({reference.tok}, "
                                  f"not {self.fp}): the numbers score other token sequences; recompute them with "
                                  "Reference.compute(ref_model, tok, examples) using this tokenizer")
            if reference.pairs != _digest(self.pairs):
                raise TinyldError("the reference log-probs were computed on other pairs (or another order) than "
                                  "these examples: recompute them with Reference.compute on the same examples")
            for name in ("chosen", "rejected"):
                t = getattr(reference, name)
                if not isinstance(t, torch.Tensor) or t.shape != (len(self.pairs),) or not t.is_floating_point():
                    what = f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
                    raise TinyldError(f"reference.{name} must be a float tensor of {len(self.pairs)} log-probs, one "
                                      f"per pair, got {what}: recompute it with Reference.compute")
                if not bool(torch.isfinite(t).all()) or bool((t > 1e-4).any()):
                    raise TinyldError(f"reference.{name} must hold finite log-probabilities (≤ 0), got "
                                      f"{t.tolist()[:4]}…: recompute it with Reference.compute")
        self.reference = reference
        self.batch_size = min(batch_size, len(self.pairs))
        self.batches_per_epoch = len(self.pairs) // self.batch_size

    def identity(self) -> dict:
        ref = None if self.reference is None else hashlib.sha1(
            torch.cat([self.reference.chosen, self.reference.rejected]).numpy().tobytes()).hexdigest()[:16]
        return {"kind": "preference", "tokenizer": self.fp, "block_size": self.block_size,
                "batch_size": self.batch_size, "seed": self.seed, "examples": _digest(self.pairs), "reference": ref}

    def indices(self, step: int) -> list[int]:
        """Which pairs make up the batch of ``step``."""
        check_int("PreferenceData step", step, 0, 2 ** 62)
        epoch, i = divmod(step, self.batches_per_epoch)
        order = torch.randperm(len(self.pairs), generator=_generator(self.seed, epoch)).tolist()
        return order[i * self.batch_size: (i + 1) * self.batch_size]

    def batch(self, step: int) -> PrefBatch:
        idx = self.indices(step)
        seqs = collate([self.pairs[j][0] for j in idx] + [self.pairs[j][1] for j in idx], self.tok.pad_id,
                       self.block_size, self.fp)
        if self.reference is None:
            zero = torch.zeros(len(idx), dtype=torch.float64)
            return PrefBatch(seqs, zero, zero.clone(), idx)
        return PrefBatch(seqs, self.reference.chosen[idx], self.reference.rejected[idx], idx)
