"""The one-step decomposition  Δ log π(·|x_o) ≈ −η · A(x_o) · K(x_o, x_u) · G(x_u, y_u)  as tensors.

Everything here talks about **rows of logits**. A row is one V-vector z. For a classifier it is the output for
one input. For a language model under teacher forcing it is one scored (response) position of a sequence. A
:class:`Rows` object says where the rows are read (``lm_rows(batch)`` or ``class_rows(x, y)``), which label each
row carries and which sequence ("group") it belongs to. The sequence-level change of log π(y|x) is the sum over
that sequence's rows (paper eq. 5).

The three factors, with N_o observed rows, N_u updating rows and P parameters:

- ``A`` (N_o, V, V) = I − 1πᵀ per observed row: :func:`softmax_jacobian`. :func:`apply_A` applies it without
  forming it: A·v = v − (πᵀv)·1.
- ``G`` (N_u, V) = ∂L/∂z on the updating rows: hand-derived residuals (:mod:`tinyld.losses`), one part per
  sequence set. DPO has two parts, chosen (+) and rejected (−).
- ``K`` (N_o, V, N_u, V) = J_o J_uᵀ, the empirical NTK. There are three routes, chosen by size:
  1. :func:`kernel` computes the full eNTK from Jacobians (tiny models and vocabularies only; it refuses larger
     ones).
  2. :func:`kernel_restricted` computes K on chosen (row, token) logits: one backward per chosen logit, batched.
  3. :func:`kg` computes K·G contracted. g_u = J_uᵀG is one backward, and K·G = J_o g_u is one forward-mode JVP.
     This route works at GPT-2 size over the full vocabulary.

:func:`one_step` takes a real step and compares it with the prediction. The step is plain SGD through A·K·G, or
any optimizer through the JVP along its actual update θ_{t+1} − θ_t.
"""
from __future__ import annotations

import contextlib
import copy
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call, jacrev, jvp

from tinyld.data import IGNORE, Batch
from tinyld.losses import PairLoss, ce_residual, pair_loss, token_logprobs
from tinyld.runtime import TinyldError, check_number, first_nonfinite

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
        _check_rows("SFTUpdate rows", rows)
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
        _check_rows("DPOUpdate chosen", chosen)
        _check_rows("DPOUpdate rejected", rejected)
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


def _lengths(rows: Rows) -> torch.Tensor:
    """Labelled rows per sequence: the response lengths n (B,)."""
    return rows.to_groups((rows.labels != IGNORE).to(torch.float64))


class ResidualUpdate:
    """An update given directly by its residual G (N_u, V): L = Σ ⟨z_u, G⟩, so ∇L = J_uᵀG exactly.

    Use it to ask "what if G were e_v at row l?" (that reads off one column of K) or to try a loss of your own."""

    name = "residual"

    def __init__(self, rows: Rows, G: torch.Tensor):
        _check_rows("ResidualUpdate rows", rows)
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


UPDATES = {"sft": SFTUpdate, "ce": SFTUpdate, "dpo": DPOUpdate, "residual": ResidualUpdate}


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


def _update_rows(update) -> list[Rows]:
    if isinstance(update, DPOUpdate):
        return [update.chosen, update.rejected]
    if isinstance(update, (SFTUpdate, ResidualUpdate)):
        return [update.rows]
    if all(hasattr(update, a) for a in ("loss", "residuals", "split", "rows")):  # an update of your own
        return [update.rows]
    raise TinyldError(f"expected an update (SFTUpdate, DPOUpdate, ResidualUpdate), got {type(update).__name__}; "
                      "build one with make_update(loss, rows, …)")


def _check_rows(name: str, rows) -> None:
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


# --------------------------------------------------------------------------------------------------------------
# A and the checks every entry point makes
# --------------------------------------------------------------------------------------------------------------


def softmax_jacobian(logits: torch.Tensor) -> torch.Tensor:
    """A = ∂ log softmax(z)/∂z = I − 1πᵀ (row i is e_i − π): (…, V, V)."""
    pi = F.softmax(logits, dim=-1)  # (…, V)
    eye = torch.eye(logits.shape[-1], dtype=logits.dtype, device=logits.device)  # (V, V)
    return eye - pi.unsqueeze(-2)  # (…, V, V): A[i, j] = δ_ij − π_j


def apply_A(logits: torch.Tensor, dz: torch.Tensor) -> torch.Tensor:
    """A·Δz = Δz − (πᵀΔz)·1 per row, without forming A: (…, V)."""
    pi = F.softmax(logits, dim=-1)  # (…, V)
    return dz - (pi * dz).sum(-1, keepdim=True)  # (…, V)


def _check(model, *rows: Rows, eta: float | None = None) -> None:
    """Everything the engine checks before it computes: a refusal in words beats a silently wrong number."""
    if eta is not None:
        check_number("learning rate eta", eta, 0, strict=True)
    if not isinstance(model, torch.nn.Module):
        raise TinyldError(f"expected a torch model, got {type(model).__name__}")
    params = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    if not params:
        raise TinyldError("the model has no floating-point parameters: nothing for the engine to differentiate")
    low = sorted({str(p.dtype) for _, p in params if p.dtype in (torch.float16, torch.bfloat16)})
    if low:
        raise TinyldError(f"the model has {', '.join(low)} parameters: the dynamics engine computes in float32 or "
                          "float64 (forward-mode AD in half precision overflows to NaN). Call model.float(), or "
                          "model.double() for exact checks")
    bad = first_nonfinite(model)
    if bad:
        raise TinyldError(f"the model's parameter {bad!r} holds NaN or inf: a diverged model has no learning "
                          "dynamics to show; load a good checkpoint")
    if model.training and any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules()):
        warnings.warn("the model is in training mode with dropout on: the decomposition assumes a deterministic "
                      "forward, so predictions will not match — call model.eval() first", stacklevel=3)
    toks = {r.tok for r in rows if r.tok is not None}
    if len(toks) > 1:
        raise TinyldError(f"observed and updating examples were built with different tokenizers ({sorted(toks)}): "
                          "build every batch with the model's tokenizer")
    V = getattr(getattr(model, "config", None), "vocab_size", None)
    device = params[0][1].device
    for r in rows:
        _check_rows("observed and updating rows", r)
        tok_v = _fingerprint_vocab(r.tok)
        if tok_v is not None and V is not None and tok_v != V:
            raise TinyldError(f"a batch was built with a {tok_v}-token vocabulary but the model has "
                              f"vocab_size={V}: use the tokenizer the model was trained with")
        if r.inputs.is_floating_point() and r.inputs.dtype != params[0][1].dtype:
            raise TinyldError(f"the inputs are {r.inputs.dtype} but the model is {params[0][1].dtype}: convert one "
                              "of them (x.double() or model.float())")
        if r.inputs.device != device:
            raise TinyldError(f"the rows are on {r.inputs.device} but the model is on {device}: build the batch "
                              f"and call batch.to(device) before lm_rows")
        has = r.labels[r.labels != IGNORE]
        if V is not None and has.numel() and (int(has.min()) < 0 or int(has.max()) >= V):
            raise TinyldError(f"a row's label is outside the vocabulary [0, {V}): the batch and the model disagree")


def _fingerprint_vocab(fp) -> int | None:
    """The vocabulary size in a tokenizer fingerprint 'name:V:hash' (None if there is none to read)."""
    try:
        return int(str(fp).split(":")[1]) if fp is not None else None
    except (IndexError, ValueError):
        return None


def _finite(name: str, t: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(t).all():
        raise TinyldError(f"{name} came out NaN or inf although the inputs were finite: the model's numbers "
                          "overflow here (try model.double(), or a smaller eta)")
    return t


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.named_parameters()}


def _math_attention(model):
    """Fused SDPA kernels have no forward-mode AD: run the JVP on the math kernel when ``fast`` is on."""
    if getattr(getattr(model, "config", None), "fast", False):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------------------------------------------
# Route 3: K·G contracted (gradient + JVP) — any size, full vocabulary
# --------------------------------------------------------------------------------------------------------------


def gradient(model, update) -> dict[str, torch.Tensor]:
    """g_u = Σ_parts J_uᵀ G_u, one backward through the hand-derived residuals. It equals ∇_θ L_u."""
    named = list(model.named_parameters())
    train = [p for _, p in named if p.requires_grad]  # frozen parameters do not move: their direction is 0
    with torch.enable_grad():
        parts = update.residuals(model)
        for _, z, G in parts:
            if z.shape != G.shape:
                raise TinyldError(f"the residual G has shape {tuple(G.shape)} but the logits it pairs with have "
                                  f"{tuple(z.shape)}: G needs one entry per (row, vocabulary token)")
        total = sum((z * G).sum() for _, z, G in parts)  # Σ ⟨z, G⟩ whose gradient is Jᵀ G
        grads = iter(torch.autograd.grad(total, train, allow_unused=True))
    out = {}
    for n, p in named:
        g = next(grads) if p.requires_grad else None
        out[n] = g if g is not None else torch.zeros_like(p)
    return out


def jvp_rows(model, rows: Rows, direction: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, J·v) at the rows for a parameter direction v: two (N, V) tensors, one forward-mode pass."""
    params = _params(model)
    with _math_attention(model):
        return jvp(lambda p: rows.logits(model, p), (params,), ({k: direction[k] for k in params},))


def kg(model, observed: Rows, update) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_o, K·G) — K(x_o, x_u)·G(x_u) contracted, full vocabulary: two (N_o, V) tensors."""
    _check(model, observed, *_update_rows(update))
    z, KG = _kg(model, observed, update)
    return z, _finite("K·G", KG)


def _kg(model, observed: Rows, update) -> tuple[torch.Tensor, torch.Tensor]:
    return jvp_rows(model, observed, gradient(model, update))  # J_o·(J_uᵀG): one backward, one JVP


def predict(model, observed: Rows, update, eta: float) -> torch.Tensor:
    """Predicted Δ log π at every observed row over the whole vocabulary: −η·A·(K·G), (N_o, V)."""
    _check(model, observed, *_update_rows(update), eta=eta)
    return _predict(model, observed, update, eta)


def _predict(model, observed: Rows, update, eta: float) -> torch.Tensor:
    z, KG = _kg(model, observed, update)  # (N_o, V), (N_o, V)
    return _finite("the predicted Δ log π", -eta * apply_A(z, KG))  # (N_o, V)


# --------------------------------------------------------------------------------------------------------------
# Routes 1 and 2: K itself
# --------------------------------------------------------------------------------------------------------------


def kernel(model, observed: Rows, updating: Rows | None = None, max_bytes: float = 2 ** 31) -> torch.Tensor:
    """The full eNTK K(x_o, x_u) = J_o J_uᵀ: (N_o, V, N_u, V). Refuses when the Jacobians exceed ``max_bytes``."""
    updating = observed if updating is None else updating
    check_number("max_bytes", max_bytes, 0, strict=True)
    _check(model, observed, updating)
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}  # frozen ones do not move
    P = sum(p.numel() for p in params.values())
    V = observed.logits(model).shape[-1] if not hasattr(model, "config") else model.config.vocab_size
    item = next(iter(params.values())).element_size()
    need = (observed.n + updating.n) * V * P * item + observed.n * updating.n * V * V * item
    if need > max_bytes:
        raise TinyldError(
            f"the full K for {observed.n}+{updating.n} rows × V={V} logits × P={P:,} parameters needs "
            f"≈{need / 2**30:.1f} GiB (limit {max_bytes / 2**30:.1f} GiB): use kernel_restricted() on chosen "
            "(row, token) logits, or kg()/predict() for K·G over the full vocabulary")

    def jac(rows):
        with _math_attention(model):
            J = jacrev(lambda p: rows.logits(model, p))(params)  # name → (N, V, *shape)
        return torch.cat([J[k].reshape(rows.n * V, -1) for k in params], dim=1)  # (N·V, P)

    Jo = jac(observed)  # (N_o·V, P)
    Ju = Jo if updating is observed else jac(updating)  # (N_u·V, P)
    return (Jo @ Ju.T).reshape(observed.n, V, updating.n, V)  # (N_o, V, N_u, V)


def kernel_restricted(model, observed: Rows, sel_o: torch.Tensor, updating: Rows | None = None,
                      sel_u: torch.Tensor | None = None) -> torch.Tensor:
    """K on chosen logits: sel (S, 2) lists (row, token) pairs; returns (S_o, S_u) = J_{sel_o} J_{sel_u}ᵀ."""
    if updating is None:
        updating = observed
    if sel_u is None:
        if updating is not observed:
            raise TinyldError("give sel_u, the (row, token) pairs of the updating rows")
        sel_u = sel_o
    _check(model, observed, updating)
    if hasattr(model, "config"):
        V = model.config.vocab_size
    else:  # a classifier: its number of classes is the width of its output
        with torch.no_grad():
            V = observed.logits(model).shape[-1]
    for name, rows, sel in (("sel_o", observed, sel_o), ("sel_u", updating, sel_u)):
        if not isinstance(sel, torch.Tensor) or sel.dim() != 2 or sel.shape[1] != 2 or sel.dtype not in (
                torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise TinyldError(f"{name} must be an integer tensor of (row, token) pairs, shape (S, 2)")
        if len(sel) == 0 or int(sel[:, 0].min()) < 0 or int(sel[:, 0].max()) >= rows.n or int(sel[:, 1].min()) < 0 \
                or (V is not None and int(sel[:, 1].max()) >= V):
            raise TinyldError(f"{name} must list at least one pair with rows in [0, {rows.n}) and tokens in "
                              f"[0, {V}), got rows {sel[:, 0].tolist()[:6]} and tokens {sel[:, 1].tolist()[:6]}")
    Jo = _selected_jacobian(model, observed, sel_o)  # (S_o, P)
    Ju = Jo if (updating is observed and sel_u is sel_o) else _selected_jacobian(model, updating, sel_u)
    return Jo @ Ju.T  # (S_o, S_u)


def _selected_jacobian(model, rows: Rows, sel: torch.Tensor) -> torch.Tensor:
    """Gradients of the chosen scalar logits, one batched backward: (S, P)."""
    params = [p for p in model.parameters() if p.requires_grad]  # frozen parameters cannot move: not in K
    with torch.enable_grad():
        z = rows.logits(model)  # (N, V)
        zs = z[sel[:, 0], sel[:, 1]]  # (S,)
        eye = torch.eye(len(zs), dtype=z.dtype, device=z.device)  # (S, S) one basis vector per chosen logit
        grads = torch.autograd.grad(zs, params, grad_outputs=eye, is_grads_batched=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros(len(zs), *p.shape, dtype=z.dtype)).reshape(len(zs), -1)
                      for g, p in zip(grads, params)], dim=1)  # (S, P)


# --------------------------------------------------------------------------------------------------------------
# Prediction vs reality
# --------------------------------------------------------------------------------------------------------------


@dataclass
class StepReport:
    """Predicted and actual Δ log π after one real step, per token and per sequence, with their errors."""

    eta: float  # the learning rate of the step
    route: str  # "sgd: −η·A·K·G" or "<Optimizer>: A·J_o·Δθ (JVP along the actual update)"
    labels: torch.Tensor  # (N_o,) the observed token at each row
    group: torch.Tensor  # (N_o,) which observed sequence each row belongs to
    pred_tokens: torch.Tensor  # (N_o,) predicted Δ log π(label) per row
    actual_tokens: torch.Tensor  # (N_o,) actual Δ log π(label) per row
    pred_seq: torch.Tensor  # (n_seq,) predicted Δ log π(y|x) = Σ of its rows
    actual_seq: torch.Tensor  # (n_seq,)
    err_full: float  # ‖pred − actual‖ / ‖actual‖ over all rows × V
    err_tokens: float  # the same on the per-row label changes
    err_seq: float  # the same on the sequence-level changes
    lbk: float  # ‖Δlog π‖²_F / (‖A_o‖²_F ‖G‖²_F) — lower bound on η²‖K‖²_F (paper App. C)
    sign_delta: float  # mean over (row, v) of the actual Δ log π
    pred: torch.Tensor | None = None  # (N_o, V) predicted, if keep_full
    actual: torch.Tensor | None = None  # (N_o, V) actual, if keep_full

    def per_position(self, seq: int = 0) -> torch.Tensor:
        """The predicted change of sequence ``seq``, split into its rows (they sum to pred_seq[seq])."""
        return self.pred_tokens[self.group == seq]

    def summary(self) -> str:
        return (f"{self.route}, η={self.eta:g}: relative error full-vocab {self.err_full:.2e}, "
                f"tokens {self.err_tokens:.2e}, sequences {self.err_seq:.2e}")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp(min=torch.finfo(b.dtype).tiny)).item()


def _label_values(rows: Rows, full: torch.Tensor) -> torch.Tensor:
    """full (N, V) → value at each row's label (N,), 0 where the row has no label."""
    has = rows.labels != IGNORE
    v = full.gather(1, rows.labels.masked_fill(~has, 0)[:, None])[:, 0]  # (N,)
    return torch.where(has, v, torch.zeros_like(v))


@torch.no_grad()
def one_step(model, update, observed: Rows, eta: float, optimizer: torch.optim.Optimizer | None = None,
             keep_full: bool = True, commit: bool = False) -> StepReport:
    """Take one real step on ``update`` and compare Δ log π at ``observed`` with the first-order prediction.

    optimizer=None is plain SGD, θ' = θ − η∇L. The prediction is −η·A·K·G, with K·G from the hand-derived
    residuals. The actual step uses autograd's ∇L, an independent path. With an optimizer (its lr must equal
    ``eta``) the step is ``optimizer.step()`` and the prediction is A·J_o·(θ' − θ), one JVP along the real
    update. The model (and the optimizer state) is restored afterwards unless ``commit``.
    """
    _check(model, observed, *_update_rows(update), eta=eta)
    params = dict(model.named_parameters())
    if optimizer is not None:
        _check_optimizer(model, optimizer, eta)
    theta0 = {k: p.detach().clone() for k, p in params.items()}
    opt_state = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
    done = False
    try:
        z0 = observed.logits(model)  # (N_o, V)
        logp0 = F.log_softmax(z0, dim=-1)  # (N_o, V)
        with torch.enable_grad():
            model.zero_grad(set_to_none=True)
            update.loss(model).backward()  # autograd: the oracle for the actual step
        if optimizer is None:
            route = "sgd: −η·A·K·G"
            for p in params.values():
                if p.grad is not None:
                    p.sub_(eta * p.grad)
        else:
            route = f"{type(optimizer).__name__}: A·J_o·Δθ"
            optimizer.step()
        model.zero_grad(set_to_none=True)
        logp1 = F.log_softmax(observed.logits(model), dim=-1)  # (N_o, V) after the step
        theta1 = {k: p.detach().clone() for k, p in params.items()}
        _load(params, theta0)  # predictions are taken at θ
        if optimizer is None:
            dz = -eta * _kg(model, observed, update)[1]  # (N_o, V) −η·K·G through the residuals
        else:
            dz = jvp_rows(model, observed, {k: theta1[k] - theta0[k] for k in params})[1]  # (N_o, V) J_o·Δθ
        G = [G for _, _, G in update.residuals(model)]  # the updating residuals at θ, for LBK
        pred = _finite("the predicted Δ log π", apply_A(z0, dz))  # (N_o, V) predicted Δ log π
        actual = _finite("the actual Δ log π after the step", logp1 - logp0)  # (N_o, V)
        done = True
    finally:  # an error or Ctrl-C anywhere above leaves the model and the optimizer as they were
        model.zero_grad(set_to_none=True)
        if done and commit:
            _load(params, theta1)
        else:
            _load(params, theta0)
            if optimizer is not None:
                optimizer.load_state_dict(opt_state)
    pt, at = _label_values(observed, pred), _label_values(observed, actual)  # (N_o,)
    ps, as_ = observed.to_groups(pt), observed.to_groups(at)  # (n_seq,)
    px = proxies(actual, z0, G)
    return StepReport(eta, route, observed.labels, observed.group, pt, at, ps, as_, _rel(pred, actual),
                      _rel(pt, at), _rel(ps, as_), px["lbk"], px["sign_delta"],
                      pred if keep_full else None, actual if keep_full else None)


def _check_optimizer(model, optimizer, eta: float) -> None:
    """The optimizer must step this model's parameters, at the learning rate eta."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TinyldError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if isinstance(optimizer, torch.optim.LBFGS):
        raise TinyldError("LBFGS needs a closure that re-evaluates the loss; one_step supports one-call "
                          "optimizers (SGD, Adam, AdamW, RMSprop, …)")
    mine = {id(p) for p in model.parameters()}
    theirs = [p for g in optimizer.param_groups for p in g["params"]]
    if not theirs or any(id(p) not in mine for p in theirs):
        raise TinyldError("the optimizer holds parameters that are not this model's (was it built for another "
                          "model, or a copy?): build it with optimizer(model.parameters(), lr=eta)")
    for g in optimizer.param_groups:
        lr = float(g["lr"])
        if not math.isclose(lr, eta, rel_tol=1e-12):
            raise TinyldError(f"the optimizer's lr={lr!r} differs from eta={eta!r}: pass the same value (a Python "
                              "float, not a tensor)")


def _load(params: dict, values: dict) -> None:
    for k, p in params.items():
        p.copy_(values[k])


def sequence_change(observed: Rows, delta: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary Δ log π (N_o, V) → Δ log π(y|x) of each observed sequence, Σ over its tokens: (n_seq,)."""
    _check_rows("observed", observed)
    if not isinstance(delta, torch.Tensor) or delta.dim() != 2 or delta.shape[0] != observed.n:
        what = tuple(delta.shape) if isinstance(delta, torch.Tensor) else type(delta).__name__
        raise TinyldError(f"delta must be (N_o, V) with one row per observed row (N_o = {observed.n}), got {what}: "
                          "pass the same rows that the prediction was made on")
    return observed.to_groups(_label_values(observed, delta))


def step_size_for(model, update, observed: Rows, target: float = 0.1) -> float:
    """A learning rate at which no observed sequence's log π(y|x) is predicted to move by more than ``target``
    nats. The prediction is linear in η, so one prediction at η = 1 suffices. Sharper models get smaller steps."""
    check_number("target", target, 0, strict=True)
    per_seq = sequence_change(observed, predict(model, observed, update, 1.0))  # (n_seq,) per unit η
    biggest = per_seq.abs().max().item()
    if not biggest > 0:
        raise TinyldError("the update is predicted not to move any observed sequence (Δ log π = 0 at η = 1): "
                          "no step size can reach the target; check that the update has a non-zero residual")
    return target / biggest


def contributions(model, update, observed: Rows, eta: float) -> torch.Tensor:
    """Which updating example moved which observed sequence: (B_u, n_seq) predicted Δ log π(y_o|x_o) due to
    each updating example. The columns sum to the whole batch's prediction."""
    _check(model, observed, *_update_rows(update), eta=eta)
    return torch.stack([sequence_change(observed, _predict(model, observed, sub, eta))  # (n_seq,) each
                        for sub in update.split()])  # (B_u, n_seq)


def halves(model, update: DPOUpdate, observed: Rows, eta: float) -> dict[str, torch.Tensor]:
    """A preference step split into its parts, each (n_seq,) the predicted Δ log π(y_o|x_o) it causes:

    - ``chosen``: the pull on y⁺ (G⁺) at the rows where y⁺ and y⁻ differ or have diverged;
    - ``rejected``: the push on y⁻ (G⁻, the negative gradient) at those rows;
    - ``shared``: the net G⁺ + G⁻ on the common prefix of y⁺ and y⁻ (same context, same token). There the two
      halves see the same logits, so they cancel exactly when c⁺ = c⁻ (DPO, hinge, robust, …): then it is 0.

    The three add up to the whole step's prediction, because −η·A·K·G is linear in G."""
    if not isinstance(update, DPOUpdate):
        raise TinyldError(f"halves splits a preference update (DPOUpdate), got {type(update).__name__}")
    _check(model, observed, update.chosen, update.rejected, eta=eta)
    (rc, zc, Gc), (rr, zr, Gr) = update.residuals(model)
    Gc, Gr, Gs = Gc.clone(), Gr.clone(), torch.zeros_like(Gc)
    with torch.no_grad():
        for b in range(rc.n_groups):
            ic, ir = (rc.group == b).nonzero()[:, 0], (rr.group == b).nonzero()[:, 0]  # rows in position order
            k = 0
            while (k < min(len(ic), len(ir)) and rc.labels[ic[k]] == rr.labels[ir[k]]
                   and torch.allclose(zc[ic[k]], zr[ir[k]], rtol=1e-5, atol=1e-6)):
                k += 1  # same context (same logits) and same token: a row of the common prefix
            Gs[ic[:k]] = Gc[ic[:k]] + Gr[ir[:k]]
            Gc[ic[:k]], Gr[ir[:k]] = 0, 0
    out = {name: sequence_change(observed, _predict(model, observed, ResidualUpdate(rows, G), eta))
           for name, rows, G in (("chosen", rc, Gc), ("rejected", rr, Gr), ("shared", rc, Gs))}
    return out


def proxies(delta: torch.Tensor, logits_o: torch.Tensor, G: torch.Tensor | list[torch.Tensor]) -> dict:
    """LBK = ‖Δlog π‖²_F / (‖A_o‖²_F ‖G‖²_F) and SignDelta = mean Δlog π, from one observed step (paper App. C).

    delta, logits_o: (N_o, V); G: the updating residual(s). ‖A‖²_F = V − 2 + V‖π‖² per row (closed form)."""
    V = logits_o.shape[-1]
    A_norm2 = (V - 2 + V * (F.softmax(logits_o, -1) ** 2).sum(-1)).sum()
    G_norm2 = sum((g ** 2).sum() for g in (G if isinstance(G, list) else [G]))
    return {"lbk": ((delta ** 2).sum() / (A_norm2 * G_norm2)).item(), "sign_delta": delta.mean().item()}
