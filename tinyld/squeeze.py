"""The squeezing model: one gradient step on a single softmax with free logits (K = I), lessons/NOTES.md §3.

A *negative* step on label y⁻ (what DPO's rejected half does) is Δz = η′(π − e_{y⁻}); a *positive* step on y (SFT)
is Δz = η′(e_y − π). After either, π′_i = π_i exp(Δz_i) / Z with Z = Σ_j π_j exp(Δz_j), so label i rises exactly
when Δz_i > log Z. For a negative step and i ≠ y⁻ that reads π_i > log(Z)/η′: the **threshold rule**. Labels above
the threshold gain, labels below it lose, and the mass taken from y⁻ is squeezed into the peak.

:func:`logit_step` takes the step; :func:`who_moves` says which labels rise and which fall, with the threshold,
so that a lesson can draw the picture (bars of π before and after).
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from tinyld.data import IGNORE
from tinyld.runtime import TinyldError, check_number


def _check(logits, label: int, eta: float, sign: int) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 1 or logits.numel() < 2 or \
            not logits.is_floating_point():
        what = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise TinyldError(f"logits must be a 1-D float tensor of V ≥ 2 values (one softmax), got {what}")
    if not bool(torch.isfinite(logits).all()):
        raise TinyldError("logits hold NaN or inf")
    V = logits.numel()
    if isinstance(label, torch.Tensor) and label.dim() == 0 and not label.is_floating_point():
        label = int(label)
    if isinstance(label, bool) or not isinstance(label, numbers.Integral) or not 0 <= label < V:
        raise TinyldError(f"label must be an integer in [0, {V}), got {label!r}")
    check_number("eta", eta, 0, strict=True)
    if isinstance(sign, bool) or not isinstance(sign, int) or sign not in (-1, 1):
        raise TinyldError(f"sign must be -1 (a negative step, as on y⁻) or +1 (a positive step, as SFT), got {sign!r}")
    return logits.to("cpu", torch.float64)  # the model computes in float64: η′ up to float64's range


def _step(z: torch.Tensor, label: int, eta: float, sign: int) -> torch.Tensor:
    """Δz = sign·η′·(e_label − π): (V,), finite for any finite η′ since |e_label − π| ≤ 1."""
    return sign * eta * (F.one_hot(torch.tensor(label), z.numel()).to(z.dtype) - F.softmax(z, -1))


def logit_step(logits: torch.Tensor, label: int, eta: float, sign: int = -1) -> torch.Tensor:
    """z′ = z + sign·η′·(e_label − π): sign −1 pushes ``label`` down (Δz = η′(π − e_label)), +1 pushes it up.
    Computed and returned in float64 (on the CPU), whatever the dtype of ``logits``."""
    z, label = _check(logits, label, eta, sign), int(label)
    out = z + _step(z, label, eta, sign)
    if not bool(torch.isfinite(out).all()):
        raise TinyldError(f"logit_step: z + η′(e − π) overflows float64 with eta = {eta!r} and logits as large as "
                          f"{z.abs().max().item():g}: take a smaller eta")
    return out


def _large_step(z: torch.Tensor, pi: torch.Tensor, dz: torch.Tensor, label: int, eta: float, sign: int):
    """(rises, π′, log Z) for a step with |Δz| ≥ 1, measured from the label k that gains most: Δz_i − Δz_k is
    formed from π_i − π_k, never from two huge Δz's, so ``rises`` stays right when η′·π is beyond 1/ε."""
    k = int((F.log_softmax(z, -1) + dz).argmax())
    gap = z - z[k]  # log π_i − log π_k
    diff = torch.where(gap.abs() < 1, pi[k] * torch.expm1(gap.clamp(max=1)), pi - pi[k])  # π_i − π_k
    rest = pi.sum() - pi[label]  # 1 − π_label, without the cancellation when π_label ≈ 1
    if k != label:
        c = -sign * eta * diff  # Δz_i − Δz_k
        c[label] = sign * eta * (rest + pi[k])
    else:
        c = -sign * eta * (rest + pi)
        c[label] = 0.0
    b = gap + c  # log π′_i − log π′_k
    log_Zk = F.log_softmax(z, -1)[k] + torch.logsumexp(b, -1)  # log Z − Δz_k
    log_Z = dz[k] + log_Zk
    if not bool(torch.isfinite(log_Z)) or bool(torch.isnan(b).any()):
        raise TinyldError(f"who_moves: the step with eta = {eta!r} overflows float64: take a smaller eta")
    return c > log_Zk, F.softmax(b, -1), log_Z


def who_moves(logits: torch.Tensor, label: int, eta: float, sign: int = -1) -> dict:
    """One step on ``label``; which labels rise and which fall.

    Returns ``pi`` and ``pi_after`` (V,), ``rises`` (V,) bool, ``log_Z`` and, for a negative step, ``threshold`` =
    log(Z)/η′ (a label i ≠ label rises exactly when π_i is above it) and ``share_threshold`` = log(Z)/(η′(1 − π_label))
    (the same rule on the share π_i/(1 − π_label); it rises as π_label falls with the other logits fixed; −1, its
    limit, when π_label = 1). For a positive step ``threshold`` = −log(Z)/η′ and a label i ≠ label rises exactly
    when π_i is *below* it: the small labels gain share, the large ones lose it. Computed in float64; the tensors
    are float64 on the CPU."""
    z, label = _check(logits, label, eta, sign), int(label)
    pi = F.softmax(z, -1)
    dz = _step(z, label, eta, sign)  # (V,) the step itself, not z′ − z
    if dz.abs().max() < 1:  # log Σ_j π_j exp(Δz_j): log1p form, accurate when the step is small
        log_Z = torch.log1p((pi * torch.expm1(dz)).sum())
        rises, pi_after = dz > log_Z, F.softmax(z + dz, -1)
    else:  # large steps: exp(Δz) would overflow, and Δz_i − log Z would cancel
        rises, pi_after, log_Z = _large_step(z, pi, dz, label, eta, sign)
    out = {"pi": pi, "pi_after": pi_after, "rises": rises, "log_Z": log_Z.item()}
    if sign == 1:  # a positive step: a label i ≠ label rises exactly when π_i is *below* −log(Z)/η′
        out["threshold"] = -log_Z.item() / eta
    else:
        out["threshold"] = log_Z.item() / eta
        rest = (pi.sum() - pi[label]).item()  # 1 − π_label, without the cancellation when π_label ≈ 1
        out["share_threshold"] = log_Z.item() / eta / rest if rest > 0 else -1.0
    return out


def squeezed_into(logits: torch.Tensor, label: int) -> int:
    """The label that a negative step on ``label`` is guaranteed to raise: the likeliest other one."""
    z, label = _check(logits, label, 1.0, -1), int(label)
    masked = z.clone()
    masked[label] = -math.inf
    return int(masked.argmax())


# ---------------------------------------------------------------------------------------------------------------
# The same picture in a language model: where the probability mass sits, position by position
# ---------------------------------------------------------------------------------------------------------------

MASS_CLASSES = ("own", "other", "argmax", "rest")


def token_mass(logits: torch.Tensor, targets: torch.Tensor, other: torch.Tensor,
               peak: torch.Tensor | None = None) -> torch.Tensor:
    """π split four ways at every scored position: (B, T, 4), rows summing to 1 where ``targets`` ≠ IGNORE, 0 elsewhere.

    Columns (:data:`MASS_CLASSES`): ``own`` = π of the sequence's own token (y⁺'s token on a chosen sequence);
    ``other`` = π of the paired response's token at the same position (y⁻'s, on a chosen sequence), 0 where it is
    the same token or the paired response has ended; ``argmax`` = π of the likeliest token (or of ``peak`` (B, T),
    e.g. the argmax before a step) when it is neither of those two; ``rest`` = everything else. The difference of
    two calls, before and after training, says where the mass went: squeezing shows as ``argmax`` gaining while
    ``own``, ``other`` and ``rest`` lose."""
    ts = {"targets": targets, "other": other, **({} if peak is None else {"peak": peak})}
    if not isinstance(logits, torch.Tensor) or not all(isinstance(t, torch.Tensor) for t in ts.values()):
        raise TinyldError("token_mass takes tensors: logits (B, T, V), targets and other (B, T), peak (B, T) or None")
    if logits.dim() != 3 or not logits.is_floating_point() or any(t.shape != logits.shape[:2] for t in ts.values()):
        raise TinyldError("token_mass needs float logits (B, T, V) and targets, other, peak of shape (B, T); got "
                          + ", ".join(f"{k} {tuple(t.shape)}" for k, t in {"logits": logits, **ts}.items()))
    V = logits.shape[-1]
    for k, t in ts.items():
        if t.is_floating_point() or t.dtype == torch.bool:
            raise TinyldError(f"token_mass: {k} must hold integer token ids, got dtype {t.dtype}")
        ok = (t >= 0) & (t < V) | (t == IGNORE) if k != "peak" else (t >= 0) & (t < V)
        if not bool(ok.all()):
            raise TinyldError(f"token_mass: {k} holds {int(t[~ok][0])}, not a token id in [0, {V})"
                              + (" or −100" if k != "peak" else ""))
    if not bool(torch.isfinite(logits).all()):
        raise TinyldError("token_mass: the logits hold NaN or inf (a diverged model?)")
    pi = F.softmax(logits.double(), -1)  # (B, T, V)
    mask = targets != IGNORE  # (B, T)
    own_id = targets.masked_fill(~mask, 0)
    oth_ok = mask & (other != IGNORE) & (other != targets)
    oth_id = other.masked_fill(~oth_ok, 0)
    top = pi.argmax(-1) if peak is None else peak  # (B, T)
    top_ok = mask & (top != targets) & ~(oth_ok & (top == other))
    own = pi.gather(-1, own_id[..., None])[..., 0]
    oth = pi.gather(-1, oth_id[..., None])[..., 0] * oth_ok
    arg = pi.gather(-1, top.masked_fill(~top_ok, 0)[..., None])[..., 0] * top_ok
    out = torch.stack([own, oth, arg, 1 - own - oth - arg], -1)  # (B, T, 4)
    return out * mask[..., None]
