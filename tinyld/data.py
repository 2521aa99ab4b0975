"""Examples, JSONL I/O and batches with prompt masks.

A sequence χ = [x; y] is a prompt x followed by a response y (EOS appended to y). The model reads
``idx = χ[:-1]`` and is scored on ``targets = χ[1:]``, where every target that is still part of the prompt, and
every padding position, is −100 (ignored). So ``targets[b, t]`` is the token that position t must predict, and
the positions with ``targets != -100`` are exactly the response positions the dynamics engine talks about.

Data sources expose one method, ``batch(step) -> Batch``: the batch is a pure function of (seed, step), so a run
resumed from a checkpoint sees exactly the batches the uninterrupted run would have seen.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from tinyld.runtime import TinyldError
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
        if self.idx.shape != self.targets.shape:
            raise TinyldError(f"mismatched batch: idx has shape {tuple(self.idx.shape)} but targets has "
                              f"{tuple(self.targets.shape)}; both must be (B, T)")

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
    if len(prompts) != len(responses):
        raise TinyldError(f"mismatched batch lengths: {len(prompts)} prompts but {len(responses)} responses")
    if not prompts:
        raise TinyldError("empty batch: give at least one (prompt, response) pair")
    seqs = [encode_example(tok, p, r, append_eos) for p, r in zip(prompts, responses)]
    return collate(seqs, tok.pad_id, block_size, fingerprint(tok))


def collate(seqs: Sequence[tuple[list[int], int]], pad_id: int, block_size: int | None = None,
            tok: str | None = None) -> Batch:
    """[(ids of χ, prompt length)] → Batch. Sequences are right-padded; the model is causal, so padding after
    a sequence never changes its logits."""
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


def read_jsonl(path: str | Path) -> list[Example]:
    """Read ``{"prompt", "chosen" (or "response"), "rejected"?}`` lines into Examples; errors name the line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise TinyldError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if "prompt" not in d:
                raise TinyldError(f"{path}:{n}: missing 'prompt'")
            chosen = d.pop("chosen", d.pop("response", None))
            if chosen is None or not str(chosen).strip():
                raise TinyldError(f"{path}:{n}: prompt with no response: add a non-empty 'chosen' or 'response'")
            out.append(Example(d.pop("prompt"), chosen, d.pop("rejected", None), d))
    return out


def write_jsonl(path: str | Path, examples: Sequence[Example]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for e in examples:
            d = {"prompt": e.prompt, "chosen": e.chosen, **({"rejected": e.rejected} if e.rejected else {}), **e.meta}
            f.write(json.dumps(d) + "\n")


def _generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


class TextStream:
    """Pretraining data: documents joined by EOS into one token stream; each batch is random windows."""

    def __init__(self, tok, docs: Sequence[str], block_size: int, batch_size: int, seed: int = 0):
        ids = []
        for d in docs:
            ids += tok.encode(d) + [tok.eos_id]
        self.tokens = torch.tensor(ids, dtype=torch.long)  # (N,)
        if len(self.tokens) <= block_size + 1:
            raise TinyldError(f"pretraining text has {len(self.tokens)} tokens, fewer than one window of "
                              f"block_size+1={block_size + 1}: add text or lower block_size")
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self.tok = fingerprint(tok)

    def batch(self, step: int) -> Batch:
        T = self.block_size
        start = torch.randint(0, len(self.tokens) - T - 1, (self.batch_size,), generator=_generator(self.seed, step))
        win = torch.stack([self.tokens[s: s + T + 1] for s in start.tolist()])  # (B, T+1)
        return Batch(win[:, :-1], win[:, 1:], self.tok)


class PairData:
    """SFT data: (prompt, response) pairs shuffled once per epoch (seeded), cut into batches."""

    def __init__(self, tok, examples: Sequence[Example], batch_size: int, block_size: int | None = None,
                 seed: int = 0):
        if not examples:
            raise TinyldError("no examples: SFT needs at least one (prompt, response) pair")
        self.seqs = [encode_example(tok, e.prompt, e.chosen) for e in examples]
        collate(self.seqs, tok.pad_id, block_size)  # validate every length once, up front
        self.tok, self.block_size, self.seed, self.fp = tok, block_size, seed, fingerprint(tok)
        self.batch_size = min(batch_size, len(self.seqs))
        self.batches_per_epoch = len(self.seqs) // self.batch_size

    def batch(self, step: int) -> Batch:
        epoch, i = divmod(step, self.batches_per_epoch)
        order = torch.randperm(len(self.seqs), generator=_generator(self.seed, epoch)).tolist()
        pick = order[i * self.batch_size: (i + 1) * self.batch_size]
        return collate([self.seqs[j] for j in pick], self.tok.pad_id, self.block_size, self.fp)
