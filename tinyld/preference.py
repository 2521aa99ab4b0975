"""Preference data: (x, y⁺, y⁻) pairs, the reference log-probs computed once, and batches of pairs.

A pair is an :class:`~tinyld.data.Example` with a ``rejected`` response. :class:`PreferenceData` cuts the pairs
into :class:`PrefBatch` es: B pairs as one batch of 2B sequences (the chosen rows first, then the rejected ones),
so one forward pass scores both. Every loss of the DPO family but SimPO compares with a reference model: its
log-probs log π_ref(y±|x) are computed once by :meth:`Reference.compute`, never by a second model in the loop,
and the data checks that they were computed on the same pairs with the same tokenizer.

This is the one place in the data layer that runs a model (the reference's forward passes).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Sequence

import torch

from tinyld.data import Batch, Example, collate, digest, encode_example, seeded_generator
from tinyld.losses import sequence_logprob
from tinyld.runtime import TinyldError, check_int, check_seed
from tinyld.tokenizers import fingerprint


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
        return cls(lp[0::2].clone(), lp[1::2].clone(), fingerprint(tok), digest(pairs))


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
                raise TinyldError(f"reference must be a preference.Reference (Reference.compute(ref_model, tok, "
                                  f"examples)), got {type(reference).__name__}")
            if reference.tok != self.fp:
                raise TinyldError(f"the reference log-probs were computed with another tokenizer ({reference.tok}, "
                                  f"not {self.fp}): the numbers score other token sequences; recompute them with "
                                  "Reference.compute(ref_model, tok, examples) using this tokenizer")
            if reference.pairs != digest(self.pairs):
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
                "batch_size": self.batch_size, "seed": self.seed, "examples": digest(self.pairs), "reference": ref}

    def indices(self, step: int) -> list[int]:
        """Which pairs make up the batch of ``step``."""
        check_int("PreferenceData step", step, 0, 2 ** 62)
        epoch, i = divmod(step, self.batches_per_epoch)
        order = torch.randperm(len(self.pairs), generator=seeded_generator(self.seed, epoch)).tolist()
        return order[i * self.batch_size: (i + 1) * self.batch_size]

    def batch(self, step: int) -> PrefBatch:
        idx = self.indices(step)
        seqs = collate([self.pairs[j][0] for j in idx] + [self.pairs[j][1] for j in idx], self.tok.pad_id,
                       self.block_size, self.fp)
        if self.reference is None:
            zero = torch.zeros(len(idx), dtype=torch.float64)
            return PrefBatch(seqs, zero, zero.clone(), idx)
        return PrefBatch(seqs, self.reference.chosen[idx], self.reference.rejected[idx], idx)
