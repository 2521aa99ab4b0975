"""Reinforcement learning with verifiable rewards: GRPO and Dr. GRPO as losses with hand-derived residuals.

For one prompt x, a group of G responses y_1 … y_G is sampled from the policy and graded: rewards r_i (1 for a
correct final answer, 0 otherwise). The advantages are relative to the group:

    GRPO:      Â_i = (r_i − mean r) / (std r + 1e-4)      std over the group, unbiased (G − 1), as TRL
    Dr. GRPO:  Â_i = r_i − mean r                        no division by the std (Liu et al., 2025)

A group whose rewards are all equal has Â = 0 for every sample: it teaches nothing, and is counted, never divided by.
Every token t of y_i has the ratio ρ_{i,t} = π_θ(y_{i,t} | x, y_{i,<t}) / π_old(…) to the policy that sampled it
(ρ = 1 on the first inner step: on-policy) and the per-token loss

    ℓ_{i,t} = −min(ρ·Â_i, clip(ρ, 1 − ε, 1 + ε)·Â_i) + β_KL·k3_{i,t},    k3 = π_ref/π_θ − log(π_ref/π_θ) − 1

(the PPO-style clipped ratio, and the k3 estimator of KL(π_θ ‖ π_ref) at the sampled token). The batch loss weights
each response's tokens by w_i and averages over the N responses of the batch:

    GRPO:      L = (1/N) Σ_i (1/n_i) Σ_t ℓ_{i,t}       each response's tokens averaged (n_i its length)
    Dr. GRPO:  L = (1/N) Σ_i (1/L) Σ_t ℓ_{i,t}         one constant normaliser L (the longest allowed response)

**The residual.** L depends on the logits z_{i,t} only through log π_θ(y_{i,t}), and ∂ log π(y)/∂z = e_y − π, so

    G_{i,t} = c_{i,t}·(π_{i,t} − e_{y_{i,t}}),    c_{i,t} = −∂L/∂ log π_θ(y_{i,t})
            = (w_i/N)·[ρ·Â_i·[the unclipped term is active] − β_KL·(1 − π_ref/π_θ)]

where the unclipped term is active unless Â > 0 and ρ > 1 + ε, or Â < 0 and ρ < 1 − ε (there min picks the clipped,
constant term, whose gradient is 0). For one on-policy GRPO step without KL, G_{i,t} = (Â_i/(N·n_i))(π − e_y) (Dr.
GRPO: Â_i/(N·L)): an SFT-like pull on every token of a sample with Â > 0 and a push — a negative gradient, like
DPO's y⁻ — on every token of a sample with Â < 0. :class:`GRPOLoss.coefficients` computes c by hand; the tests check
it against autograd of :meth:`GRPOLoss.value` and against the formulas worked by hand.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tinyld.data import Batch
from tinyld.losses import token_logprobs
from tinyld.runtime import TinyldError, check_int, check_number

GRPO_LOSSES = {
    "grpo": "GRPO: advantages divided by the group's std; each response's tokens averaged (1/n_i)",
    "dr_grpo": "Dr. GRPO: advantages not divided by the std; one constant token normaliser (1/L)",
}
STD_EPS = 1e-4  # added to the group's std before dividing (TRL's value)


def check_rewards(rewards) -> torch.Tensor:
    """Rewards as a float64 (groups, G) tensor: finite, at least 2 samples per group; else one clear error."""
    if not isinstance(rewards, torch.Tensor):
        try:
            rewards = torch.as_tensor(rewards, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise TinyldError(f"rewards must be numbers, one row per group of samples, got {type(rewards).__name__}")\
                from None
    if rewards.dim() != 2 or rewards.dtype == torch.bool or rewards.is_complex():
        raise TinyldError(f"rewards must be a (groups, G) table of numbers, one row per prompt; got shape "
                          f"{tuple(rewards.shape)}, dtype {rewards.dtype}")
    if rewards.shape[0] == 0 or rewards.shape[1] < 2:
        raise TinyldError(f"each group needs at least 2 samples to have a group-relative advantage; got groups of "
                          f"{rewards.shape[1]} ({rewards.shape[0]} groups)")
    rewards = rewards.double()
    if not bool(torch.isfinite(rewards).all()):
        bad = rewards[~torch.isfinite(rewards)][0].item()
        raise TinyldError(f"rewards must be finite, got {bad}: a grader returns a number for every sample")
    return rewards


@dataclass(frozen=True)
class GRPOLoss:
    """One RL loss of :data:`GRPO_LOSSES` with its options: ``clip`` ε of the clipped ratio (0 < ε < 1), ``kl``
    β_KL ≥ 0 of the k3 penalty to the reference, ``max_len`` L of Dr. GRPO's normaliser (None: the longest response of
    the batch; :class:`~tinyld.rl_data.RLData` sets it to its max_new_tokens, TRL's constant). Per-token inputs
    are 1-D tensors over the scored tokens of a batch, ``seq`` (N_tok,) says which response each token belongs to,
    ``adv`` (N,) and ``lengths`` (N,) are per response."""

    name: str = "grpo"
    clip: float = 0.2
    kl: float = 0.0
    max_len: int | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or self.name not in GRPO_LOSSES:
            raise TinyldError(f"unknown RL loss {self.name!r}: choose one of {', '.join(GRPO_LOSSES)}")
        object.__setattr__(self, "clip", float(check_number(f"{self.name} clip", self.clip, 0, 1, strict=True,
                                                            hi_open=True)))
        object.__setattr__(self, "kl", float(check_number(f"{self.name} kl", self.kl, 0, 100)))
        if self.max_len is not None:
            if self.name != "dr_grpo":
                raise TinyldError("max_len is Dr. GRPO's constant normaliser; grpo averages each response's tokens")
            check_int(f"{self.name} max_len", self.max_len, 1)

    def advantages(self, rewards) -> torch.Tensor:
        """Â (groups, G) from the rewards (groups, G): minus the group mean, and for GRPO over the group's std
        (+1e-4). A group of equal rewards gets Â = 0 (see :func:`flat_groups`)."""
        r = check_rewards(rewards)
        a = r - r.mean(1, keepdim=True)
        return a / (r.std(1, keepdim=True) + STD_EPS) if self.name == "grpo" else a

    def weights(self, lengths: torch.Tensor) -> torch.Tensor:
        """w_i/N per response (N,): 1/(N n_i) for GRPO, 1/(N L) for Dr. GRPO."""
        n = lengths.to(torch.float64)
        if self.name == "grpo":
            return 1.0 / (len(n) * n)
        L = float(self.max_len if self.max_len is not None else n.max())
        if self.max_len is not None and bool((n > L).any()):
            raise TinyldError(f"a response has {int(n.max())} tokens, more than Dr. GRPO's max_len {L:g}")
        return torch.full_like(n, 1.0 / (len(n) * L))

    def _check(self, logp, old, ref, adv, seq, lengths):
        N_tok = logp.shape[0] if isinstance(logp, torch.Tensor) and logp.dim() == 1 else None
        for name, t, n in (("logp", logp, N_tok), ("old", old, N_tok), ("ref", ref, N_tok), ("seq", seq, N_tok),
                           ("adv", adv, None), ("lengths", lengths, None)):
            if name == "ref" and t is None:
                continue
            if not isinstance(t, torch.Tensor) or t.dim() != 1 or (n is not None and t.shape[0] != n):
                what = f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
                raise TinyldError(f"{self.name}: {name} must be a 1-D tensor" + (f" of {n} tokens" if n else "")
                                  + f", got {what}")
        if ref is None and self.kl:
            raise TinyldError(f"{self.name} with kl {self.kl:g} needs the reference's log-probs (ref)")
        if adv.shape != lengths.shape or int(seq.max()) >= adv.shape[0]:
            raise TinyldError(f"{self.name}: adv and lengths hold one value per response, and seq indexes them")

    def per_token(self, logp, old, ref, adv, seq) -> torch.Tensor:
        """ℓ_{i,t} for every token (N_tok,)."""
        a = adv.to(logp.dtype)[seq]
        rho = torch.exp(logp - old)
        loss = -torch.minimum(rho * a, torch.clamp(rho, 1 - self.clip, 1 + self.clip) * a)
        if self.kl:
            u = ref.to(logp.dtype) - logp
            loss = loss + self.kl * (torch.exp(u) - u - 1)
        return loss

    def value(self, logp, old, ref, adv, seq, lengths) -> torch.Tensor:
        """The batch loss L (a scalar)."""
        self._check(logp, old, ref, adv, seq, lengths)
        w = self.weights(lengths).to(logp.dtype)
        return (w[seq] * self.per_token(logp, old, ref, adv, seq)).sum()

    def coefficients(self, logp, old, ref, adv, seq, lengths) -> torch.Tensor:
        """c_{i,t} = −∂L/∂ log π_θ(y_{i,t}) for every token (N_tok,), derived by hand (module docstring)."""
        self._check(logp, old, ref, adv, seq, lengths)
        a = adv.to(logp.dtype)[seq]
        rho = torch.exp(logp - old)
        active = ~(((a > 0) & (rho > 1 + self.clip)) | ((a < 0) & (rho < 1 - self.clip)))
        c = rho * a * active.to(logp.dtype)
        if self.kl:
            c = c - self.kl * (1 - torch.exp(ref.to(logp.dtype) - logp))
        return self.weights(lengths).to(logp.dtype)[seq] * c


@dataclass
class RLBatch:
    """Sampled responses to train on: ``seqs`` (B, T) each prompt + its sampled response (the prompt masked, as for
    SFT), ``adv`` (B,) each response's advantage, ``old`` and ``ref`` (B, T) the sampling policy's and the
    reference's log-prob of each scored token (0 elsewhere; ``ref`` None without a KL term), ``rewards`` (B,)."""

    seqs: Batch
    adv: torch.Tensor
    old: torch.Tensor
    ref: torch.Tensor | None
    rewards: torch.Tensor

    def to(self, device) -> "RLBatch":
        return RLBatch(self.seqs.to(device), self.adv.to(device), self.old.to(device),
                       None if self.ref is None else self.ref.to(device), self.rewards.to(device))

    def rows(self, sl: slice) -> "RLBatch":
        """Sequences ``sl`` alone (a torchrun rank's share)."""
        s = self.seqs
        return RLBatch(Batch(s.idx[sl], s.targets[sl], s.tok), self.adv[sl], self.old[sl],
                       None if self.ref is None else self.ref[sl], self.rewards[sl])

    def loss(self, spec: "GRPOLoss", logits: torch.Tensor) -> torch.Tensor:
        """The loss ``spec`` of these samples from the policy's logits (B, T, V)."""
        mask = self.seqs.mask  # (B, T)
        logp = token_logprobs(logits[mask], self.seqs.targets[mask])  # (N_tok,)
        seq = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)[mask]
        ref = None if self.ref is None else self.ref[mask]
        return spec.value(logp, self.old[mask].to(logp.dtype), ref, self.adv, seq, mask.sum(1))


def flat_groups(rewards) -> int:
    """How many groups have all-equal rewards: their advantages are 0 and they move nothing."""
    r = check_rewards(rewards)
    return int((r.max(1).values == r.min(1).values).sum())


def grpo_loss(name: "str | GRPOLoss" = "grpo", **params) -> GRPOLoss:
    """A :class:`GRPOLoss` by name (``grpo_loss("dr_grpo", clip=0.1)``); a GRPOLoss passes through unchanged."""
    if isinstance(name, GRPOLoss):
        if params:
            raise TinyldError("give either a GRPOLoss or a loss name with parameters, not both")
        return name
    unknown = sorted(map(str, set(params) - {"clip", "kl", "max_len"}))
    if unknown:
        raise TinyldError(f"unknown RL-loss parameter(s) {unknown}: the parameters are clip, kl, max_len")
    return GRPOLoss(name, **params)


def unbiased_pass_at_k(n: int, c: int, k: int) -> float:
    """pass@k from n samples of which c are correct (Chen et al., 2021): 1 − C(n − c, k)/C(n, k)."""
    check_int("pass@k n", n, 1)
    check_int("pass@k c", c, 0, n)
    check_int("pass@k k", k, 1, n)
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)
