"""Sequence log-probabilities and losses.

Log-probs of a response are **summed** over its tokens (prompt masked). ``lm_loss`` (pretraining) is the one
place a mean over tokens is used, and its name says so.

Dims: B batch, T length, V vocabulary.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tinyld.data import IGNORE


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log π(target_t | χ_<=t) at every position, 0 where the target is IGNORE: (B, T)."""
    logp = F.log_softmax(logits.float() if logits.dtype in (torch.bfloat16, torch.float16) else logits, dim=-1)  # (B, T, V)
    mask = targets != IGNORE  # (B, T)
    safe = targets.masked_fill(~mask, 0)  # (B, T) any valid id where masked
    lp = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return torch.where(mask, lp, torch.zeros_like(lp))  # (B, T) masked: exactly 0, and exactly 0 gradient


def sequence_logprob(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log π(y | x) = Σ_t log π(y_t | x, y_<t), summed over response tokens: (B,)."""
    return token_logprobs(logits, targets).sum(dim=1)  # (B,)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pretraining loss: cross-entropy **mean over scored tokens** (a scalar)."""
    mask = targets != IGNORE  # (B, T)
    return -(token_logprobs(logits, targets).sum() / mask.sum().clamp(min=1))


def sft_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """SFT loss: −log π(y⁺ | x) summed over response tokens, **mean over the batch** (a scalar)."""
    return -sequence_logprob(logits, targets).mean()


LOSSES = {"pretrain": lm_loss, "sft": sft_loss}
