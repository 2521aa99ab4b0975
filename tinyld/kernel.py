"""The A and K of −η·A·K·G, and the engine's checks on its inputs.

- ``A`` (N_o, V, V) = I − 1πᵀ per observed row: :func:`softmax_jacobian`. :func:`apply_A` applies it without
  forming it: A·v = v − (πᵀv)·1.
- ``K`` (N_o, V, N_u, V) = J_o J_uᵀ, the empirical NTK, by one of three routes chosen by size:
  1. :func:`kernel` computes the full eNTK from Jacobians (tiny models and vocabularies only; it refuses larger
     ones).
  2. :func:`kernel_restricted` computes K on chosen (row, token) logits: one backward per chosen logit, batched.
  3. :func:`kg` computes K·G contracted. g_u = J_uᵀG is one backward (:func:`gradient`), and K·G = J_o g_u is one
     forward-mode JVP (:func:`jvp_rows`). This route works at GPT-2 size over the full vocabulary.
- :func:`predict` puts them together: the predicted Δ log π = −η·A·(K·G) at every observed row.

Every entry point first runs :func:`check_inputs`: a refusal in words beats a silently wrong number.
"""
from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F
from torch.func import jacrev, jvp

from tinyld.data import IGNORE
from tinyld.runtime import TinyldError, check_number, first_nonfinite
from tinyld.updates import Rows, check_rows, update_rows

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


def check_inputs(model, *rows: Rows, eta: float | None = None) -> None:
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
        check_rows("observed and updating rows", r)
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


def check_finite(name: str, t: torch.Tensor) -> torch.Tensor:
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
    check_inputs(model, observed, *update_rows(update))
    z, KG = jvp_rows(model, observed, gradient(model, update))  # J_o·(J_uᵀG): one backward, one JVP
    return z, check_finite("K·G", KG)


def predict(model, observed: Rows, update, eta: float) -> torch.Tensor:
    """Predicted Δ log π at every observed row over the whole vocabulary: −η·A·(K·G), (N_o, V)."""
    check_inputs(model, observed, *update_rows(update), eta=eta)
    z, KG = jvp_rows(model, observed, gradient(model, update))  # (N_o, V), (N_o, V)
    return check_finite("the predicted Δ log π", -eta * apply_A(z, KG))  # (N_o, V)


# --------------------------------------------------------------------------------------------------------------
# Routes 1 and 2: K itself
# --------------------------------------------------------------------------------------------------------------


def kernel(model, observed: Rows, updating: Rows | None = None, max_bytes: float = 2 ** 31) -> torch.Tensor:
    """The full eNTK K(x_o, x_u) = J_o J_uᵀ: (N_o, V, N_u, V). Refuses when the Jacobians exceed ``max_bytes``."""
    updating = observed if updating is None else updating
    check_number("max_bytes", max_bytes, 0, strict=True)
    check_inputs(model, observed, updating)
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
    check_inputs(model, observed, updating)
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


