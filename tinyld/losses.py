"""Sequence log-probabilities and losses.

Log-probs of a response are **summed** over its tokens (prompt masked). ``lm_loss`` (pretraining) is the one
place a mean over tokens is used, and its name says so.

Dims: B batch, T length, V vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tinyld.data import IGNORE
from tinyld.runtime import TinyldError, check_number


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


# ---------------------------------------------------------------------------------------------------------------
# The preference-loss family, under TRL's names (DPOTrainer's loss_type; SimPO as in CPOTrainer; DPOP from Smaug).
#
# Every loss here is a function ℓ of a pair's summed log-probs: lc = log π(y⁺|x), lr = log π(y⁻|x), the reference's
# rc, rr, and the response lengths nc, nr (tokens, EOS included). The batch loss is the mean over pairs. Because
# ∂ log π(y|x)/∂z_l = e_{y_l} − π_l at each response position l, the residual on the logits is
#
#     G⁺_l = c⁺ (π_l − e_{y⁺_l}) / B        with  c⁺ = −∂ℓ/∂lc   (c⁺ > 0 pulls y⁺ up, like SFT)
#     G⁻_l = −c⁻ (π_l − e_{y⁻_l}) / B       with  c⁻ = +∂ℓ/∂lr   (c⁻ > 0 pushes y⁻ down: the negative gradient)
#
# so a loss is known to the engine by its two per-pair coefficients (c⁺, c⁻), derived by hand in PairLoss.coefficients
# and checked against autograd in the tests. Notation: σ the logistic function, m = (lc − rc) − (lr − rr) the
# reference-relative margin, and σ(−x) = 1 − σ(x).
# ---------------------------------------------------------------------------------------------------------------

PAIR_LOSSES = {  # name: what its residual does to y⁺ and y⁻
    "sigmoid": "DPO: c⁺ = c⁻ = β σ(−βm); both pulls fade as the margin grows but never stop (label_smoothing ε > 0 "
               "is cDPO: the pull reverses once σ(βm) > 1 − ε)",
    "hinge": "SLiC with the reference: c⁺ = c⁻ = β while βm < 1, then exactly 0: it stops once the margin is met",
    "ipo": "IPO on length-averaged log-probs: c± = 2(1/(2β) − m̄)/n±; it pushes y⁻ down until the margin reaches "
           "1/(2β), then pulls the other way",
    "robust": "robust DPO (label noise ε): c⁺ = c⁻ = β[(1 − ε)σ(−βm) + εσ(βm)]/(1 − 2ε) > 0, it never stops pushing",
    "rpo": "DPO + α·NLL(y⁺)/n⁺: c⁺ = β σ(−βm) + α/n⁺, c⁻ = β σ(−βm); the extra SFT pull on y⁺ never fades",
    "simpo": "SimPO, no reference: c± = β σ(−h)/n± with h = β(lc/nc − lr/nr) − γ; per token, so long answers are "
             "pushed less per token",
    "dpop": "DPO-Positive: c⁺ = β(1 + λ[lc < rc]) σ(−h), c⁻ = β σ(−h), h = β(m − λ·max(0, rc − lc)); y⁺ is pulled "
            "much harder once it falls below the reference",
}


@dataclass(frozen=True)
class PairLoss:
    """One preference loss with its hyper-parameters. ``per_pair`` gives ℓ per pair (B,), ``value`` the batch mean,
    ``coefficients`` the hand-derived (c⁺, c⁻) (module comment above). All inputs are (B,) tensors.

    Formulas (B pairs; β > 0; m = (lc − rc) − (lr − rr); n± the response lengths):

    - ``sigmoid`` ℓ = −(1 − ε) log σ(βm) − ε log σ(−βm)  (ε = label_smoothing; ε > 0 is cDPO)
    - ``hinge``   ℓ = max(0, 1 − βm)
    - ``ipo``     ℓ = (m̄ − 1/(2β))², m̄ = (lc − rc)/nc − (lr − rr)/nr  (TRL averages log-probs over tokens for IPO)
    - ``robust``  ℓ = [−(1 − ε) log σ(βm) + ε log σ(−βm)] / (1 − 2ε)
    - ``rpo``     ℓ = −log σ(βm) − α·lc/nc  (α as older TRL's rpo_alpha, in TRL 1.x the weight of the "sft" term
      beside "sigmoid" in loss_type; the NLL is taken per pair, as the mean over its tokens, while TRL averages one
      NLL over all chosen tokens of the batch: equal when the lengths are)
    - ``simpo``   ℓ = −log σ(β·lc/nc − β·lr/nr − γ)  (no reference)
    - ``dpop``    ℓ = −log σ(β[m − λ·max(0, rc − lc)])
    """

    name: str = "sigmoid"
    beta: float = 0.1  # β: the inverse temperature of the margin (for SimPO, the per-token reward scale)
    label_smoothing: float = 0.0  # ε ∈ [0, 0.5): sigmoid (cDPO) and robust only
    gamma: float = 0.5  # SimPO's target margin γ (TRL's simpo_gamma)
    alpha: float = 1.0  # RPO's NLL weight α (older TRL's rpo_alpha; TRL 1.x: the "sft" term's loss weight)
    lam: float = 50.0  # DPOP's penalty λ (the Smaug paper's default)

    def __post_init__(self):
        if not isinstance(self.name, str) or self.name not in PAIR_LOSSES:
            raise TinyldError(f"unknown preference loss {self.name!r}: choose one of {', '.join(PAIR_LOSSES)}")
        set_ = lambda k, v: object.__setattr__(self, k, float(v))  # noqa: E731  (frozen; numpy scalars → float)
        set_("beta", check_number(f"{self.name} loss: beta", self.beta, 0, strict=True))
        set_("label_smoothing", check_number(f"{self.name} loss: label_smoothing", self.label_smoothing, 0, 0.5,
                                             hi_open=True))
        if self.label_smoothing and self.name not in ("sigmoid", "robust"):
            raise TinyldError(f"label_smoothing is for the sigmoid (cDPO) and robust losses, not {self.name!r}")
        set_("gamma", check_number(f"{self.name} loss: gamma", self.gamma, 0))
        set_("alpha", check_number(f"{self.name} loss: alpha", self.alpha, 0))
        set_("lam", check_number(f"{self.name} loss: lam", self.lam, 0))
        for key, owner in (("gamma", "simpo"), ("alpha", "rpo"), ("lam", "dpop")):  # a value the loss would ignore
            if self.name != owner and getattr(self, key) != PairLoss.__dataclass_fields__[key].default:
                raise TinyldError(f"{key} is a parameter of the {owner!r} loss, not of {self.name!r}: drop it")

    @property
    def uses_reference(self) -> bool:
        return self.name != "simpo"

    @property
    def note(self) -> str:
        return PAIR_LOSSES[self.name]

    def _check_pairs(self, lc, lr, rc, rr, nc, nr) -> None:
        """Each of the six inputs is a 1-D tensor of the same length B ≥ 1 (no broadcasting between pairs)."""
        args = {"lc": lc, "lr": lr, "rc": rc, "rr": rr, "nc": nc, "nr": nr}
        for k, t in args.items():
            want = "tensor" if k in ("nc", "nr") else "float tensor"  # lengths may be integers
            if not isinstance(t, torch.Tensor):
                raise TinyldError(f"{self.name} loss: {k} must be a 1-D {want} (B,), one value per pair; got a "
                                  f"{type(t).__name__}")
            if t.dim() != 1 or len(t) == 0 or t.dtype == torch.bool or t.is_complex() \
                    or (want == "float tensor" and not t.is_floating_point()):
                raise TinyldError(f"{self.name} loss: {k} must be a 1-D {want} (B,), one value per pair, B ≥ 1; got "
                                  f"a {t.dtype} tensor of shape {tuple(t.shape)}")
        if len({len(t) for t in args.values()}) > 1:
            raise TinyldError(f"{self.name} loss: lc, lr, rc, rr, nc, nr must all hold one value per pair (the same "
                              "length B); got lengths " + ", ".join(f"{k} {len(t)}" for k, t in args.items()))

    def per_pair(self, lc, lr, rc, rr, nc, nr) -> torch.Tensor:
        """ℓ for each pair: (B,)."""
        self._check_pairs(lc, lr, rc, rr, nc, nr)
        b, eps = self.beta, self.label_smoothing
        m = (lc - rc) - (lr - rr)  # (B,)
        if self.name == "sigmoid":
            return -(1 - eps) * F.logsigmoid(b * m) - eps * F.logsigmoid(-b * m)
        if self.name == "hinge":
            return torch.relu(1 - b * m)
        if self.name == "ipo":
            return ((lc - rc) / nc - (lr - rr) / nr - 1 / (2 * b)) ** 2
        if self.name == "robust":
            return (-(1 - eps) * F.logsigmoid(b * m) + eps * F.logsigmoid(-b * m)) / (1 - 2 * eps)
        if self.name == "rpo":
            return -F.logsigmoid(b * m) - self.alpha * lc / nc
        if self.name == "simpo":
            return -F.logsigmoid(b * lc / nc - b * lr / nr - self.gamma)
        return -F.logsigmoid(b * (m - self.lam * torch.relu(rc - lc)))  # dpop

    def value(self, lc, lr, rc, rr, nc, nr) -> torch.Tensor:
        """The batch loss: the mean of :meth:`per_pair` (a scalar)."""
        return self.per_pair(lc, lr, rc, rr, nc, nr).mean()

    def coefficients(self, lc, lr, rc, rr, nc, nr) -> tuple[torch.Tensor, torch.Tensor]:
        """(c⁺, c⁻), each (B,): c⁺ = −∂ℓ/∂lc and c⁻ = +∂ℓ/∂lr, derived by hand (no autograd).

        sigmoid: dℓ/dm = −β[(1 − ε)σ(−βm) − εσ(βm)]           → c⁺ = c⁻ = β[(1 − ε)σ(−βm) − εσ(βm)]
        hinge:   dℓ/dm = −β where 1 − βm > 0, else 0          → c⁺ = c⁻ = β·[βm < 1]
        ipo:     dℓ/dlc = 2(m̄ − 1/(2β))/nc, dℓ/dlr = −2(m̄ − 1/(2β))/nr → c± = 2(1/(2β) − m̄)/n±
        robust:  dℓ/dm = −β[(1 − ε)σ(−βm) + εσ(βm)]/(1 − 2ε)  → c⁺ = c⁻ = that with the sign flipped
        rpo:     sigmoid's with ε = 0, plus ∂(−α·lc/nc)/∂lc = −α/nc on y⁺ → c⁺ += α/nc
        simpo:   h = β lc/nc − β lr/nr − γ, dℓ/dh = −σ(−h)    → c⁺ = βσ(−h)/nc, c⁻ = βσ(−h)/nr
        dpop:    h = β(m − λ max(0, rc − lc)), dh/dlc = β(1 + λ[rc > lc]), dh/dlr = −β, dℓ/dh = −σ(−h)
                 → c⁺ = β(1 + λ[rc > lc])σ(−h), c⁻ = βσ(−h)
        (At a kink, hinge at βm = 1 and dpop at lc = rc, the coefficient is the one-sided value that
        torch.relu's gradient takes: the penalty's derivative counts only when it is strictly active.)
        """
        self._check_pairs(lc, lr, rc, rr, nc, nr)
        b, eps = self.beta, self.label_smoothing
        m = (lc - rc) - (lr - rr)
        if self.name in ("sigmoid", "rpo"):
            c = b * ((1 - eps) * torch.sigmoid(-b * m) - eps * torch.sigmoid(b * m))
            return (c + self.alpha / nc, c) if self.name == "rpo" else (c, c)
        if self.name == "hinge":
            c = b * (b * m < 1).to(m.dtype)
            return c, c
        if self.name == "ipo":
            k = 2 * (1 / (2 * b) - ((lc - rc) / nc - (lr - rr) / nr))
            return k / nc, k / nr
        if self.name == "robust":
            c = b * ((1 - eps) * torch.sigmoid(-b * m) + eps * torch.sigmoid(b * m)) / (1 - 2 * eps)
            return c, c
        if self.name == "simpo":
            s = torch.sigmoid(-(b * lc / nc - b * lr / nr - self.gamma))
            return b * s / nc, b * s / nr
        below = (rc > lc).to(m.dtype)  # dpop
        s = torch.sigmoid(-b * (m - self.lam * torch.relu(rc - lc)))
        return b * (1 + self.lam * below) * s, b * s


def pair_loss(name: "str | PairLoss" = "sigmoid", **params) -> PairLoss:
    """A :class:`PairLoss` by name (``pair_loss("ipo", beta=0.5)``); a PairLoss passes through unchanged."""
    if isinstance(name, PairLoss):
        if params:
            raise TinyldError("give either a PairLoss or a loss name with parameters, not both")
        return name
    known = {f for f in PairLoss.__dataclass_fields__ if f != "name"}
    unknown = sorted(map(str, set(params) - known))
    if unknown:
        raise TinyldError(f"unknown preference-loss parameter(s) {unknown}: the parameters are "
                          f"{', '.join(sorted(known))}")
    return PairLoss(name, **params)
