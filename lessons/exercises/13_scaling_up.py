"""Exercises of lesson 13 — scaling up: data parallelism, simulated in one process.

The lesson's setting: its pretrained model in float64 (400 pretraining steps in fast mode, 3000 otherwise; the
first run pretrains it and caches it in tinyld_out/cache) and its global batch of 8 SFT sequences,
``PairData(...).batch(0)``. A "rank" here is a part of that batch, as ``tinyld.distributed.shard`` cuts it; no
torchrun needed. Fill in each function below where it says ``raise NotImplementedError``, then run this file:

    TINYLD_FAST=1 python lessons/exercises/13_scaling_up.py    # on the fast-mode models, as in the lab

Each answer is checked against an independent computation: autograd's gradient of the whole batch, the weights
that reproduce the ranks' averaged gradient recovered from per-sequence gradients by least squares, and torch's
own token-mean cross-entropy. A failed check prints a hint. Worked solutions: ``lessons/solutions/13_scaling_up.py``.
"""
import copy
import functools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from tinyld.data import Batch, PairData
from tinyld.distributed import shard
from tinyld.losses import sft_loss

sys.path.insert(0, str(Path(__file__).parent))
from check import compare, exercise, fast, lesson_model, run_checks  # noqa: E402


def ranks_gradient(model, batch: Batch, world: int) -> torch.Tensor:
    """Exercise 1: the gradient that ``world`` data-parallel processes agree on for one step: each rank takes its
    part ``shard(batch, rank, world)``, computes the gradient of ``sft_loss`` on it, and DDP averages the ranks'
    gradients. Return it flattened over ``model.parameters()`` in order, shape (P,), in the model's dtype.

    Predict first: in float64 it equals the whole batch's gradient to rounding. With a float32 copy of the model
    (``copy.deepcopy(model).float()``), is it bit-equal to the float32 gradient of the whole batch? If not, how
    close, and why? (The same question for a whole run: why are the losses of a two-process and a one-process
    training run close but not bit-equal?)"""
    raise NotImplementedError


def sequence_weights(rows_per_rank: list[list[int]], B: int) -> torch.Tensor:
    """Exercise 2: rank r holds the sequences ``rows_per_rank[r]`` of a global batch of B (its loss is the SFT
    loss, a mean over its own sequences) and DDP averages the ranks' gradients. That average is Σ_i w_i ∇ℓ_i with
    ℓ_i = −log π(y_i|x_i): return the weights w, shape (B,). The global SFT loss gives every sequence 1/B.

    Predict first: in the lesson's section 1, give rank 1 the first half as well (``shard(batch, 0, 2)`` for both).
    The two ranks then agree with each other. Which check fails, and what would training under torchrun silently
    do? What if one rank holds 2 sequences and the other 6?"""
    raise NotImplementedError


def safe_token_mean(logits: torch.Tensor, targets: torch.Tensor, global_tokens: int, world: int) -> torch.Tensor:
    """Exercise 3: a token-mean loss that is safe for data parallelism. One rank's loss from its logits (b, T, V)
    and targets (b, T) (−100 where unscored): the sum over its response tokens of −log π(y_t), divided by
    (the global number of response tokens) / world, a scalar. ``global_tokens`` would come from an all-reduce of
    the ranks' counts (in the lesson: ``sum(counts)``).

    Predict first: does the average of the ranks' gradients now equal the gradient of the whole batch's token mean,
    L' = Σ_tokens ℓ_t / (number of response tokens), whatever the ranks' token counts?"""
    raise NotImplementedError


def lesson_setting():
    """(float64 model, global batch), as the lesson makes them."""
    return _setting(lesson_steps())


def lesson_steps() -> int:
    """The lesson model's pretraining steps: 400 in fast mode, 3000 otherwise."""
    return 400 if fast() else 3000


@functools.lru_cache(maxsize=2)
def _setting(steps: int):
    world, tok, base = lesson_model(steps)
    model = copy.deepcopy(base).double()
    data = PairData(tok, [it.example("train") for it in world.train_items()], 8, model.config.block_size, seed=0)
    return model, data.batch(0)


def flat_grad(model, loss) -> torch.Tensor:
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))])  # (P,)


def sft_of(model, batch: Batch, keep: list[int]) -> torch.Tensor:
    """The SFT loss of the sequences ``keep`` of the batch (what a rank holding them computes)."""
    return sft_loss(model(batch.idx[keep]), batch.targets[keep])


@exercise(1, "the gradient the ranks agree on", "the lesson's grad_of is one rank's part: do it for shard(batch, rank, "
          "world) of every rank, then what DDP does with the results")
def check_ranks(answers):
    model, batch = lesson_setting()
    m32 = copy.deepcopy(model).float()
    cases = [(model, 2, 1e-12, "float64: only the order of the sums differs"),
             (model, 4, 1e-12, "float64: only the order of the sums differs"),
             (m32, 2, 1e-5, "float32: each rank sums in its own order, so the result agrees to float32 rounding, "
                            "not bit for bit")]
    got = [answers.ranks_gradient(m, batch, world) for m, world, _, _ in cases]
    want = flat_grad(model, sft_loss(model(batch.idx), batch.targets))  # (P,) the whole batch, float64
    for (m, world, rel, why), answer in zip(cases, got):
        problem = compare(answer, want, rel * want.abs().max().item(), f"{rel:g} of the largest entry; {why}")
        if problem:
            return f"{world} ranks, {str(next(m.parameters()).dtype)[6:]} model: {problem}"


def per_sequence_gradients() -> torch.Tensor:
    """(B, P): ∇ℓ_i of each sequence's −log π(y_i|x_i), one backward each."""
    return _per_sequence(lesson_steps())


@functools.lru_cache(maxsize=2)
def _per_sequence(steps: int) -> torch.Tensor:
    model, batch = _setting(steps)
    return torch.stack([flat_grad(model, sft_of(model, batch, [i])) for i in range(batch.idx.shape[0])])


@exercise(2, "what each sequence weighs", "write rank r's loss as (1/n_r)·Σ_{i it holds} ℓ_i, average the ranks' "
          "gradients, and read off the coefficient of each ∇ℓ_i (a sequence held by two ranks collects from both)")
def check_weights(answers):
    model, batch = lesson_setting()
    B = batch.idx.shape[0]
    cases = {"the lesson's two halves": [[0, 1, 2, 3], [4, 5, 6, 7]],
             "both ranks on the first half": [[0, 1, 2, 3], [0, 1, 2, 3]],
             "2 and 6 sequences": [[0, 1], [2, 3, 4, 5, 6, 7]],
             "four ranks": [[0, 1], [2, 3], [4, 5], [6, 7]]}
    got = {name: answers.sequence_weights([list(r) for r in ranks], B) for name, ranks in cases.items()}
    G = per_sequence_gradients()  # (B, P)
    for name, ranks in cases.items():
        g = sum(flat_grad(model, sft_of(model, batch, r)) for r in ranks) / len(ranks)  # (P,) as DDP averages
        w = torch.linalg.lstsq(G.T, g[:, None]).solution[:, 0]  # (B,) the weights that reproduce it
        problem = compare(got[name], w, 1e-6, "least squares on the 8 per-sequence gradients (far from parallel) "
                                               "recovers the weights to rounding; the room is for a float32 answer")
        if problem:
            return f"{name} ({ranks}): {problem}"


@exercise(3, "a token mean that survives data parallelism", "token_logprobs from tinyld.losses gives log π(y_t) at "
          "every position (0 where the target is −100); every rank must divide by the same number")
def check_token_mean(answers):
    model, batch = lesson_setting()
    for world in (2, 4):
        parts = [shard(batch, r, world) for r in range(world)]
        global_tokens = int((batch.targets != -100).sum())
        losses = [answers.safe_token_mean(model(p.idx), p.targets, global_tokens, world) for p in parts]
        if not isinstance(losses[0], torch.Tensor) or losses[0].dim() != 0:
            return f"{world} ranks: the loss must be a scalar tensor (with its graph), got {type(losses[0]).__name__}"
        got = sum(flat_grad(model, loss) for loss in losses) / world  # (P,) the ranks' averaged gradient
        logits = model(batch.idx)  # (B, T, V)
        whole = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=-100)  # token mean
        want = flat_grad(model, whole)
        problem = compare(got, want, 1e-12 * want.abs().max().item(),
                          "1e-12 of the largest entry: float64, only the order of the sums differs")
        if problem:
            return f"{world} ranks, tokens per rank {[int((p.targets != -100).sum()) for p in parts]}: {problem}"


CHECKS = [check_ranks, check_weights, check_token_mean]

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(CHECKS, sys.modules[__name__])) else 1)
