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
    if logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.float()  # the fast path's bf16 logits: log-softmax in float32
    logp = F.log_softmax(logits, dim=-1)  # (B, T, V)
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


# ---------------------------------------------------------------------------------------------------------------
# Residuals G = ∂L/∂z, derived by hand (lessons/NOTES.md §2). Each is checked against torch.autograd in the tests.
# Convention: the batch loss is the mean over B sequences of a per-sequence loss, so every G carries 1/B.
# ---------------------------------------------------------------------------------------------------------------


def ce_residual(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """π − e_y: the residual of −log π_y, any leading shape (…, V); rows whose label is IGNORE are exactly 0.

    Why: −log π_y = −z_y + log Σ exp z, so ∂/∂z = −e_y + π. It sums to 0 over V and vanishes when π = e_y.
    """
    mask = labels != IGNORE  # (…,)
    G = F.softmax(logits, dim=-1)  # (…, V) π
    G = G.scatter_add(-1, labels.masked_fill(~mask, 0).unsqueeze(-1), -torch.ones_like(G[..., :1]))  # π − e_y
    return torch.where(mask.unsqueeze(-1), G, torch.zeros_like(G))  # (…, V)


def sft_residual(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """G of :func:`sft_loss`: (π − e_y)/B at response positions, exactly 0 elsewhere: (B, T, V)."""
    return ce_residual(logits, targets) / logits.shape[0]  # (B, T, V)


def dpo_loss(logp_c: torch.Tensor, logp_r: torch.Tensor, ref_c: torch.Tensor, ref_r: torch.Tensor,
             beta: float = 0.1) -> torch.Tensor:
    """DPO: mean over the batch of −log σ(β[(log π(y⁺) − log π_ref(y⁺)) − (log π(y⁻) − log π_ref(y⁻))]).

    Inputs are (B,) summed sequence log-probs (policy chosen, policy rejected, reference chosen, reference rejected).
    """
    margin = beta * ((logp_c - ref_c) - (logp_r - ref_r))  # (B,)
    return -F.logsigmoid(margin).mean()


def dpo_scale(logp_c, logp_r, ref_c, ref_r, beta: float = 0.1) -> torch.Tensor:
    """β(1 − a) with a = σ(β(r⁺ − r⁻)): the size of DPO's pull/push per pair, in (0, β): (B,)."""
    return beta * (1 - torch.sigmoid(beta * ((logp_c - ref_c) - (logp_r - ref_r))))  # (B,)


def dpo_residual(logits_c, targets_c, logits_r, targets_r, ref_c, ref_r, beta: float = 0.1):
    """G of :func:`dpo_loss` on the chosen and on the rejected logits: two (B, T, V) tensors.

    G⁺ = +β(1−a)(π − e_{y⁺})/B pulls y⁺ up (like SFT, scaled); G⁻ = −β(1−a)(π − e_{y⁻})/B pushes y⁻ down — the
    *negative gradient*. β(1−a) shrinks as the margin grows.
    """
    with torch.no_grad():
        s = dpo_scale(sequence_logprob(logits_c, targets_c), sequence_logprob(logits_r, targets_r),
                      ref_c, ref_r, beta).view(-1, 1, 1)  # (B, 1, 1)
    return s * sft_residual(logits_c, targets_c), -s * sft_residual(logits_r, targets_r)
