"""Forecasting what finetuning will do (lessons/NOTES.md has the background; paper §5 of the reference article):
pre-memorization train accuracy (Kang et al.) and CHES (Razin et al.).

- **Memorized.** A training example is memorized at a checkpoint when the teacher-forced perplexity of its
  reference solution, exp(mean NLL per token), is below exp(e^τ). τ = −2.3 (perplexity ≈ 1.105) is the published
  value for GSM8k, −1.7 (≈ 1.20) for MATH. :func:`memorized`, :func:`solution_perplexity`.
- **Pre-memorization accuracy.** With acc_k(i) the accuracy of sampled solutions to training question i at
  checkpoint k, PM_t(i) = min(max_{k ≤ t} acc_k(i)·[i not memorized at k], acc_t(i)); the dataset value is the mean
  over i. An example memorized at every checkpoint so far has PM 0. :func:`pre_memorization_accuracy`.
- **CHES** for a preference pair (x, y⁺, y⁻): with H⁺ and H⁻ the sums of the last hidden states (after the final
  layer norm, the features the head reads) at the positions that predict y⁺'s and y⁻'s tokens,
  CHES = ⟨H⁺, H⁻⟩ − ‖H⁺‖². The length-normalised form uses H⁺/|y⁺| and H⁻/|y⁻|. A high CHES (the two responses
  look alike to the model) predicts that DPO lowers log π(y⁺). :func:`ches`, :func:`ches_from_hidden`.
"""
from __future__ import annotations

import math
import reprlib
import sys
from typing import Sequence

import torch

from tinyld.data import make_batch
from tinyld.losses import token_logprobs
from tinyld.runtime import TinyldError, check_number

TAU_MAX = math.log(math.log(sys.float_info.max))  # ≈ 6.565: the largest τ whose threshold exp(e^τ) is a float


def memorization_threshold(tau: float = -2.3) -> float:
    """The perplexity below which a reference solution counts as memorized: exp(e^τ)."""
    tau = check_number("tau", tau)
    if tau > TAU_MAX:
        raise TinyldError(f"tau = {tau!r} is too large: the threshold exp(e^τ) overflows a float; the largest τ that "
                          f"works is {TAU_MAX!r} (τ is on a log-log scale: the published values are −2.3 for GSM8k "
                          "and −1.7 for MATH)")
    return math.exp(math.exp(tau))


def memorized(perplexity: torch.Tensor, tau: float = -2.3) -> torch.Tensor:
    """perplexity < exp(e^τ), elementwise (bool, same shape)."""
    try:
        p = torch.as_tensor(perplexity)
    except (TypeError, ValueError, RuntimeError):
        p = None
    if p is None or p.dtype == torch.bool or p.is_complex():
        raise TinyldError(f"perplexity must be a tensor or a list of perplexities (numbers ≥ 1), got "
                          f"{type(perplexity).__name__} {reprlib.repr(perplexity)}")
    p = p.to(torch.float64)
    if not bool(torch.isfinite(p).all()) or bool((p < 1).any()):
        raise TinyldError("perplexities must be finite and ≥ 1 (exp of a mean negative log-likelihood)")
    return p < memorization_threshold(tau)


@torch.no_grad()
def solution_perplexity(model, tok, prompts: Sequence[str], solutions: Sequence[str]) -> torch.Tensor:
    """Teacher-forced perplexity exp(−mean_t log π(y_t|x, y_<t)) of each reference solution (EOS included): (N,)."""
    b = make_batch(tok, prompts, solutions, model.config.block_size).to(next(model.parameters()).device)
    lp = token_logprobs(model.eval()(b.idx), b.targets)  # (N, T), 0 off the response
    return torch.exp(-lp.sum(1) / b.mask.sum(1)).double().cpu()


def pre_memorization_accuracy(acc: torch.Tensor, is_memorized: torch.Tensor) -> torch.Tensor:
    """PM_t(i) for every checkpoint t and example i: (T, N), from sampled accuracies ``acc`` (T, N) in [0, 1] and
    ``is_memorized`` (T, N) bool, checkpoints in training order. The dataset value at t is ``.mean(1)``."""
    acc = torch.as_tensor(acc, dtype=torch.float64)
    mem = torch.as_tensor(is_memorized)
    if acc.dim() != 2 or mem.shape != acc.shape:
        raise TinyldError(f"acc and is_memorized must both be (checkpoints, examples), got {tuple(acc.shape)} and "
                          f"{tuple(mem.shape)}")
    if mem.dtype != torch.bool:
        raise TinyldError(f"is_memorized must be a bool tensor, got {mem.dtype}")
    if not bool(((acc >= 0) & (acc <= 1)).all()):
        raise TinyldError("accuracies must lie in [0, 1]")
    best = torch.cummax(acc * (~mem), dim=0).values  # (T, N) max over k ≤ t of acc_k·[not memorized at k]
    return torch.minimum(best, acc)


def ches_from_hidden(h_plus: torch.Tensor, h_minus: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """CHES from the hidden states of one pair: ``h_plus`` (|y⁺|, C) and ``h_minus`` (|y⁻|, C) at the positions that
    predict each response's tokens. ⟨H⁺, H⁻⟩ − ‖H⁺‖² with H = Σ h (or the mean, if ``normalize``)."""
    for name, h in (("h_plus", h_plus), ("h_minus", h_minus)):
        if not isinstance(h, torch.Tensor) or not h.is_floating_point():
            what = f"a {h.dtype} tensor" if isinstance(h, torch.Tensor) else type(h).__name__
            raise TinyldError(f"{name} must be a float tensor of hidden states (positions, C), got {what}")
    if h_plus.dim() != 2 or h_minus.dim() != 2 or h_plus.shape[1] != h_minus.shape[1] or not len(h_plus) \
            or not len(h_minus):
        raise TinyldError(f"hidden states must be (positions, C) for both responses, got {tuple(h_plus.shape)} and "
                          f"{tuple(h_minus.shape)}")
    hp = h_plus.double().mean(0) if normalize else h_plus.double().sum(0)
    hm = h_minus.double().mean(0) if normalize else h_minus.double().sum(0)
    return hp @ hm - hp @ hp


@torch.no_grad()
def ches(model, tok, prompts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str],
         normalize: bool = False) -> torch.Tensor:
    """CHES of every pair (N,), from the model's last hidden states (:meth:`tinyld.model.GPT.hidden`)."""
    out = []
    for sel in (chosen, rejected):
        b = make_batch(tok, prompts, sel, model.config.block_size).to(next(model.parameters()).device)
        h = model.eval().hidden(b.idx)  # (N, T, C)
        out.append([h[i][b.mask[i]] for i in range(len(prompts))])  # rows that predict the response's tokens
    return torch.stack([ches_from_hidden(hp, hm, normalize) for hp, hm in zip(*out)]).cpu()


def auc(score: Sequence[float], positive: Sequence[bool]) -> float | None:
    """P(score of a positive > score of a negative), ties counting ½ (None when one class is empty): how well
    ``score`` ranks the positives first, from 0.5 (no better than chance) to 1."""
    pos = [s for s, p in zip(score, positive) if p]
    neg = [s for s, p in zip(score, positive) if not p]
    if not pos or not neg:
        return None
    return sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))
