"""The G side of −η·A·K·G: where logits are read (:class:`Rows`) and the updates that move them.

A **row** is one V-vector of logits z. For a classifier it is the output for one input; for a language model
under teacher forcing it is one scored (response) position of a sequence. :class:`Rows` says where the rows are
read (``lm_rows(batch)`` or ``class_rows(x, y)``), which label each row carries and which sequence ("group") it
belongs to. The sequence-level change of log π(y|x) is the sum over that sequence's rows (paper eq. 5).

An **update** is an updating batch with its loss. Each one has two paths to the same gradient:

- ``loss(model)``: the scalar loss, for autograd (the oracle);
- ``residuals(model)``: the hand-derived residuals G = ∂L/∂z on its rows, one part per sequence set
  (:mod:`tinyld.losses`, :mod:`tinyld.rl`). SFT and GRPO have one part; a preference loss (DPO and its family) has
  two, chosen (+) and rejected (−); :class:`ResidualUpdate` takes G as given.

``split()`` cuts an update into one update per example whose gradients add up to the whole: the unit of
attribution (:func:`tinyld.dynamics.contributions`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import functional_call

from tinyld.data import IGNORE, Batch
from tinyld.losses import PairLoss, ce_residual, pair_loss, token_logprobs
from tinyld.rl import grpo_loss
from tinyld.runtime import TinyldError, check_number

# --------------------------------------------------------------------------------------------------------------
# Rows: where logits are read
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Rows:
    """N rows of V logits: the scored positions of an LM batch, or a classifier's outputs."""

    inputs: torch.Tensor  # idx (B, T) for an LM · x (B, D…) for a classifier
    index: torch.Tensor | None  # (B, T) bool: which positions are rows (LM) · (B,) or None for a classifier
    labels: torch.Tensor  # (N,) the label (observed or target token) of each row; IGNORE if none
    group: torch.Tensor  # (N,) which sequence / input each row belongs to
    n_groups: int  # number of sequences / inputs
    tok: str | None = None  # tokenizer fingerprint (None: unknown, e.g. a classifier)

    @property
    def n(self) -> int:
        return self.labels.shape[0]

    def logits(self, model, params: dict | None = None) -> torch.Tensor:
        """z at the rows: (N, V). With ``params`` the model is called functionally (for torch.func)."""
        out = model(self.inputs) if params is None else functional_call(model, params, (self.inputs,))
        return out if self.index is None else out[self.index]  # (N, V)

    def subset(self, keep: torch.Tensor) -> "Rows":
        """Only the rows where ``keep`` (N,) is True; sequences keep their numbering."""
        index = keep.clone() if self.index is None else self.index.clone()
        if self.index is not None:
            index[self.index] = keep
        return Rows(self.inputs, index, self.labels[keep], self.group[keep], self.n_groups, self.tok)

    def to_groups(self, per_row: torch.Tensor) -> torch.Tensor:
        """Sum a per-row quantity (N,) into its sequences: (n_groups,)."""
        return torch.zeros(self.n_groups, dtype=per_row.dtype, device=per_row.device).index_add_(
            0, self.group.to(per_row.device), per_row)


def lm_rows(batch: Batch) -> Rows:
    """The response positions of a batch (targets ≠ −100) as rows; labels are the response tokens."""
    if not isinstance(batch, Batch):
        raise TinyldError(f"lm_rows takes a Batch (from data.make_batch), got {type(batch).__name__}")
    mask = batch.mask  # (B, T)
    if not bool(mask.any()):
        raise TinyldError("the batch has no response tokens (every target is −100): observed and updating "
                          "examples need a non-empty response")
    group = torch.arange(batch.idx.shape[0], device=mask.device)[:, None].expand_as(mask)[mask]  # (N,)
    return Rows(batch.idx, mask, batch.targets[mask], group, batch.idx.shape[0], batch.tok)


def class_rows(x: torch.Tensor, y: torch.Tensor | None = None) -> Rows:
    """One row per input of a classifier; ``y`` (B,) are class labels (optional for observed inputs)."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        what = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise TinyldError(f"class_rows needs a batch of inputs x of shape (B, …), got {what}; one input x becomes "
                          "x[None]")
    B = x.shape[0]
    if B == 0:
        raise TinyldError("empty input batch: give at least one example")
    if y is not None and (not isinstance(y, torch.Tensor) or y.shape != (B,) or y.is_floating_point()):
        what = f"shape {tuple(y.shape)}, dtype {y.dtype}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise TinyldError(f"labels y must be an integer tensor of shape ({B},), one class per input; got {what}")
    labels = y if y is not None else torch.full((B,), IGNORE, dtype=torch.long, device=x.device)
    return Rows(x, None, labels, torch.arange(B, device=x.device), B)


# --------------------------------------------------------------------------------------------------------------
# Updates: an updating batch with its loss (autograd oracle) and its hand-derived residuals
# --------------------------------------------------------------------------------------------------------------


class SFTUpdate:
    """SFT / cross-entropy on ``rows``: L = weight · mean over sequences of −Σ_rows log π(label)."""

    name = "sft"

    def __init__(self, rows: Rows, weight: float = 1.0):
        check_rows("SFTUpdate rows", rows)
        if not bool((rows.labels != IGNORE).any()):
            raise TinyldError("the SFT update has no labelled rows, so its residual is 0 and nothing would move: "
                              "give labels (class_rows(x, y), or a batch with responses)")
        self.rows, self.weight = rows, check_number("SFTUpdate weight", weight)

    def loss(self, model) -> torch.Tensor:
        logp = token_logprobs(self.rows.logits(model), self.rows.labels)  # (N,) log π(label) per row
        return -self.weight * self.rows.to_groups(logp).mean()

    def residuals(self, model) -> list[tuple[Rows, torch.Tensor, torch.Tensor]]:
        """[(rows, z with graph (N, V), G (N, V))] with G = weight·(π − e_y)/n_sequences."""
        z = self.rows.logits(model)  # (N, V)
        G = self.weight * ce_residual(z.detach(), self.rows.labels) / self.rows.n_groups  # (N, V)
        return [(self.rows, z, G)]

    def split(self) -> list["SFTUpdate"]:
        """One update per sequence, weighted so that their gradients sum to this update's gradient."""
        r = self.rows
        return [SFTUpdate(_sub_rows(r, b), self.weight / r.n_groups) for b in range(r.n_groups)]


class DPOUpdate:
    """A preference loss on pairs: L = weight · mean_b ℓ(log π(y⁺_b), log π(y⁻_b), ref⁺_b, ref⁻_b, n⁺_b, n⁻_b).

    ``loss`` names the member of the family (:data:`tinyld.losses.PAIR_LOSSES`: sigmoid = DPO, hinge, ipo, robust,
    rpo, simpo, dpop) or is a :class:`~tinyld.losses.PairLoss`; ``beta`` and ``params`` (label_smoothing, gamma,
    alpha, lam) are its hyper-parameters. SimPO needs no reference (pass None); every other loss does."""

    name = "dpo"

    def __init__(self, chosen: Rows, rejected: Rows, ref_chosen=None, ref_rejected=None,
                 beta: float | None = None, weight: float = 1.0, loss: "str | PairLoss" = "sigmoid", **params):
        check_rows("DPOUpdate chosen", chosen)
        check_rows("DPOUpdate rejected", rejected)
        if chosen.n_groups != rejected.n_groups:
            raise TinyldError(f"DPO needs as many chosen as rejected responses, got {chosen.n_groups} and "
                              f"{rejected.n_groups}")
        for b in range(chosen.n_groups):  # a pair that prefers nothing: same input, same response tokens
            ci, ri = chosen.inputs[b], rejected.inputs[b]
            same_in = chosen.index is not None and rejected.index is not None and ci.shape == ri.shape and \
                bool((ci == ri).all())
            if same_in and torch.equal(chosen.labels[chosen.group == b], rejected.labels[rejected.group == b]):
                raise TinyldError(f"pair {b}: the chosen and the rejected response are the same tokens, so the pair "
                                  "prefers nothing (its two halves cancel exactly); drop it or fix the rejected one")
        self.chosen, self.rejected = chosen, rejected
        if beta is not None:
            check_number("DPO beta", beta, 0, strict=True)
            params["beta"] = beta
        self.pair_loss = pair_loss(loss, **params)
        self.beta = self.pair_loss.beta
        self.weight = check_number("DPOUpdate weight", weight)
        B = chosen.n_groups
        if not self.pair_loss.uses_reference and (ref_chosen is None) != (ref_rejected is None):
            raise TinyldError(f"the {self.pair_loss.name!r} loss uses no reference: give both reference log-probs "
                              "or neither")
        if not self.pair_loss.uses_reference and ref_chosen is None:
            ref_chosen = ref_rejected = torch.zeros(B, dtype=torch.float64)  # unused by the loss
        elif ref_chosen is None or ref_rejected is None:
            raise TinyldError(f"the {self.pair_loss.name!r} loss needs the reference log-probs of both responses "
                              "(ref_chosen, ref_rejected); only 'simpo' works without a reference")
        self.ref_c = _ref_logps("ref_chosen", ref_chosen, B)  # (B,) log π_ref(y⁺|x), summed
        self.ref_r = _ref_logps("ref_rejected", ref_rejected, B)  # (B,) log π_ref(y⁻|x), summed
        self.n_c, self.n_r = _lengths(chosen), _lengths(rejected)  # (B,) response lengths in tokens

    def _seq_logp(self, rows: Rows, z: torch.Tensor) -> torch.Tensor:
        return rows.to_groups(token_logprobs(z, rows.labels))  # (B,) log π(y|x), summed over the response

    def _args(self, zc, zr):
        lc, lr = self._seq_logp(self.chosen, zc), self._seq_logp(self.rejected, zr)  # (B,), (B,)
        dt = lc.dtype
        return lc, lr, self.ref_c.to(dt), self.ref_r.to(dt), self.n_c.to(dt), self.n_r.to(dt)

    def loss(self, model) -> torch.Tensor:
        args = self._args(self.chosen.logits(model), self.rejected.logits(model))
        return self.weight * self.pair_loss.value(*args)

    def residuals(self, model):
        """Chosen part G⁺ = +c⁺(π − e_{y⁺})/B and rejected part G⁻ = −c⁻(π − e_{y⁻})/B, with the loss's hand-derived
        per-pair coefficients (c⁺, c⁻) (:meth:`tinyld.losses.PairLoss.coefficients`); for DPO c± = β(1 − a)."""
        zc, zr = self.chosen.logits(model), self.rejected.logits(model)  # (N⁺, V), (N⁻, V)
        with torch.no_grad():
            cp, cm = self.pair_loss.coefficients(*self._args(zc, zr))  # (B,), (B,)
            k = self.weight / self.chosen.n_groups
            Gc = (k * cp)[self.chosen.group, None] * ce_residual(zc, self.chosen.labels)  # (N⁺, V)
            Gr = -(k * cm)[self.rejected.group, None] * ce_residual(zr, self.rejected.labels)  # (N⁻, V)
        return [(self.chosen, zc, Gc), (self.rejected, zr, Gr)]

    def split(self) -> list["DPOUpdate"]:
        B = self.chosen.n_groups
        return [DPOUpdate(_sub_rows(self.chosen, b), _sub_rows(self.rejected, b), self.ref_c[b:b + 1],
                          self.ref_r[b:b + 1], weight=self.weight / B, loss=self.pair_loss) for b in range(B)]


class GRPOUpdate:
    """An RL step (GRPO, Dr. GRPO: :mod:`tinyld.rl`) on ``rows``, one sequence per sampled response: ``adv`` (N,)
    their advantages; ``old``, ``ref`` (N_tok,) each token's log-prob under the sampling policy (None: on-policy,
    ρ = 1 with its gradient) and the reference (None: no KL). Dr. GRPO's normaliser, when not given, is fixed here
    to the batch's longest response, so that :meth:`split` keeps it."""

    name = "grpo"

    def __init__(self, rows: Rows, adv, old=None, ref=None, loss="grpo", weight: float = 1.0, **params):
        check_rows("GRPOUpdate rows", rows)
        spec = grpo_loss(loss, **params)
        lengths = _lengths(rows)  # (N,)
        if bool((lengths == 0).any()):
            raise TinyldError("GRPOUpdate: every sampled response needs at least one scored token")
        if spec.name == "dr_grpo" and spec.max_len is None:
            spec = grpo_loss("dr_grpo", clip=spec.clip, kl=spec.kl, max_len=int(lengths.max()))
        self.rows, self.spec, self.lengths = rows, spec, lengths
        self.weight = check_number("GRPOUpdate weight", weight)
        self.adv = _per("adv", adv, rows.n_groups, "one advantage per response")
        self.old = None if old is None else _per("old", old, rows.n, "one log-prob per scored token")
        self.ref = None if ref is None else _per("ref", ref, rows.n, "one log-prob per scored token")
        if spec.kl and self.ref is None:
            raise TinyldError(f"{spec.name} with kl {spec.kl:g} needs the reference's log-probs (ref) of every token")

    def _terms(self, z: torch.Tensor):
        logp = token_logprobs(z, self.rows.labels)  # (N_tok,)
        dt = logp.dtype
        old = logp.detach() if self.old is None else self.old.to(dt)
        ref = None if self.ref is None else self.ref.to(dt)
        return logp, old, ref, self.adv.to(dt), self.rows.group, self.lengths

    def loss(self, model) -> torch.Tensor:
        return self.weight * self.spec.value(*self._terms(self.rows.logits(model)))

    def residuals(self, model):
        """G = c(π − e_y) at every sampled token, c = −∂L/∂ log π(y) from :meth:`tinyld.rl.GRPOLoss.coefficients`:
        a pull where Â > 0, a push (a negative gradient) where Â < 0."""
        z = self.rows.logits(model)  # (N_tok, V)
        with torch.no_grad():
            c = self.weight * self.spec.coefficients(*self._terms(z))  # (N_tok,)
            G = c[:, None] * ce_residual(z, self.rows.labels)
        return [(self.rows, z, G)]

    def split(self) -> list["GRPOUpdate"]:
        """One update per sampled response, weighted so that the gradients add up to this one's."""
        r, N = self.rows, self.rows.n_groups
        return [GRPOUpdate(_sub_rows(r, b), self.adv[b:b + 1], None if self.old is None else self.old[r.group == b],
                           None if self.ref is None else self.ref[r.group == b], self.spec, self.weight / N)
                for b in range(N)]


def _per(name: str, t, n: int, what: str) -> torch.Tensor:
    t = t.detach() if isinstance(t, torch.Tensor) else torch.as_tensor(t, dtype=torch.float64)
    if t.dim() != 1 or t.shape[0] != n or not t.is_floating_point() or not bool(torch.isfinite(t).all()):
        raise TinyldError(f"GRPOUpdate {name} must hold {what} ({n},), finite; got shape {tuple(t.shape)}, "
                          f"dtype {t.dtype}")
    return t


def _lengths(rows: Rows) -> torch.Tensor:
    """Labelled rows per sequence: the response lengths n (B,)."""
    return rows.to_groups((rows.labels != IGNORE).to(torch.float64))


class ResidualUpdate:
    """An update given directly by its residual G (N_u, V): L = Σ ⟨z_u, G⟩, so ∇L = J_uᵀG exactly.

    Use it to ask "what if G were e_v at row l?" (that reads off one column of K) or to try a loss of your own."""

    name = "residual"

    def __init__(self, rows: Rows, G: torch.Tensor):
        check_rows("ResidualUpdate rows", rows)
        if not isinstance(G, torch.Tensor) or G.dim() != 2 or not G.is_floating_point():
            what = f"shape {tuple(G.shape)}, dtype {G.dtype}" if isinstance(G, torch.Tensor) else type(G).__name__
            raise TinyldError(f"G must be a float tensor of shape (N_u, V), got {what}")
        if G.shape[0] != rows.n:
            raise TinyldError(f"G has {G.shape[0]} rows but the updating batch has {rows.n} scored positions")
        if not torch.isfinite(G).all():
            raise TinyldError("G holds NaN or inf: a residual must be finite")
        self.rows, self.G = rows, G.detach()

    def loss(self, model) -> torch.Tensor:
        return (self.rows.logits(model) * self.G).sum()

    def residuals(self, model):
        return [(self.rows, self.rows.logits(model), self.G)]

    def split(self) -> list["ResidualUpdate"]:
        return [ResidualUpdate(_sub_rows(self.rows, b), self.G[self.rows.group == b]) for b in
                range(self.rows.n_groups)]


UPDATES = {"sft": SFTUpdate, "ce": SFTUpdate, "dpo": DPOUpdate, "grpo": GRPOUpdate, "residual": ResidualUpdate}


def make_update(loss: str, *args, **kw):
    """Build an update by loss name: ``make_update("sft", rows)``, ``make_update("dpo", c, r, ref_c, ref_r)``."""
    if not isinstance(loss, str) or loss not in UPDATES:
        raise TinyldError(f"unknown loss {loss!r}: choose one of {', '.join(UPDATES)}")
    return UPDATES[loss](*args, **kw)


def _sub_rows(r: Rows, b: int) -> Rows:
    """The rows of sequence b alone, as a batch of one."""
    keep = r.group == b  # (N,)
    inputs = r.inputs[b:b + 1]
    index = None if r.index is None else r.index[b:b + 1]
    return Rows(inputs, index, r.labels[keep], torch.zeros(int(keep.sum()), dtype=torch.long,
                                                           device=r.group.device), 1, r.tok)


def update_rows(update) -> list[Rows]:
    if isinstance(update, DPOUpdate):
        return [update.chosen, update.rejected]
    if isinstance(update, (SFTUpdate, ResidualUpdate, GRPOUpdate)):
        return [update.rows]
    if all(hasattr(update, a) for a in ("loss", "residuals", "split", "rows")):  # an update of your own
        return [update.rows]
    raise TinyldError(f"expected an update (SFTUpdate, DPOUpdate, ResidualUpdate), got {type(update).__name__}; "
                      "build one with make_update(loss, rows, …)")


def check_rows(name: str, rows) -> None:
    if not isinstance(rows, Rows):
        raise TinyldError(f"{name} must be Rows (from lm_rows(batch) or class_rows(x, y)), got "
                          f"{type(rows).__name__}")
    if rows.n == 0:
        raise TinyldError(f"{name} has no scored positions: observed and updating examples need a non-empty "
                          "response")


def _ref_logps(name: str, ref, B: int) -> torch.Tensor:
    """Reference log-probs as a (B,) tensor: one finite number per pair, never broadcast."""
    try:
        t = ref.detach() if isinstance(ref, torch.Tensor) else torch.as_tensor(ref, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TinyldError(f"{name} must be a tensor of {B} summed log-probs (one per pair), got "
                          f"{type(ref).__name__}") from None
    if t.dim() == 0 and B == 1:
        t = t.reshape(1)
    if t.dim() != 1 or t.shape[0] != B or not t.is_floating_point():
        raise TinyldError(f"{name} must hold one float log-prob per pair, shape ({B},); got shape "
                          f"{tuple(t.shape)}, dtype {t.dtype}. Compute it with "
                          "evaluate.response_logprobs(ref_model, tok, prompts, responses)")
    if not torch.isfinite(t).all() or (t > 1e-4).any():
        raise TinyldError(f"{name} must be finite log-probabilities (≤ 0; not a loss), got {t.tolist()[:4]}")
    return t


