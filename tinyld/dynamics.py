"""Prediction against reality: one real step, and what the decomposition says about it.

The factors of Δ log π(·|x_o) ≈ −η · A(x_o) · K(x_o, x_u) · G(x_u, y_u) live in two modules:
:mod:`tinyld.updates` holds the rows and the updates with their residuals G, and :mod:`tinyld.kernel` holds A,
the three routes to K, K·G and :func:`~tinyld.kernel.predict`. This module uses them:

- :func:`one_step` takes a real step and compares it with the prediction. The step is plain SGD through A·K·G,
  or any optimizer through the JVP along its actual update θ_{t+1} − θ_t. It returns a :class:`StepReport`.
- :func:`sequence_change` sums a full-vocabulary Δ into the change of each observed sequence (paper eq. 5), and
  :func:`step_size_for` picks η so that no observed sequence moves by more than a target.
- The analyses: :func:`contributions` (which updating example moved which observed sequence), :func:`halves`
  (a preference step split into its pull on y⁺, its push on y⁻ and their shared prefix) and :func:`proxies`
  (LBK and SignDelta from one observed step).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tinyld.data import IGNORE
from tinyld.kernel import apply_A, check_finite, check_inputs, gradient, jvp_rows, predict
from tinyld.runtime import TinyldError, check_number
from tinyld.updates import DPOUpdate, ResidualUpdate, Rows, check_rows, update_rows

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
    check_inputs(model, observed, *update_rows(update), eta=eta)
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
            dz = -eta * jvp_rows(model, observed, gradient(model, update))[1]  # (N_o, V) −η·K·G through the residuals
        else:
            dz = jvp_rows(model, observed, {k: theta1[k] - theta0[k] for k in params})[1]  # (N_o, V) J_o·Δθ
        G = [G for _, _, G in update.residuals(model)]  # the updating residuals at θ, for LBK
        pred = check_finite("the predicted Δ log π", apply_A(z0, dz))  # (N_o, V) predicted Δ log π
        actual = check_finite("the actual Δ log π after the step", logp1 - logp0)  # (N_o, V)
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
    check_rows("observed", observed)
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
    check_inputs(model, observed, *update_rows(update), eta=eta)
    return torch.stack([sequence_change(observed, predict(model, observed, sub, eta))  # (n_seq,) each
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
    check_inputs(model, observed, update.chosen, update.rejected, eta=eta)
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
    out = {name: sequence_change(observed, predict(model, observed, ResidualUpdate(rows, G), eta))
           for name, rows, G in (("chosen", rc, Gc), ("rejected", rr, Gr), ("shared", rc, Gs))}
    return out


def proxies(delta: torch.Tensor, logits_o: torch.Tensor, G: torch.Tensor | list[torch.Tensor]) -> dict:
    """LBK = ‖Δlog π‖²_F / (‖A_o‖²_F ‖G‖²_F) and SignDelta = mean Δlog π, from one observed step (paper App. C).

    delta, logits_o: (N_o, V); G: the updating residual(s). ‖A‖²_F = V − 2 + V‖π‖² per row (closed form)."""
    V = logits_o.shape[-1]
    A_norm2 = (V - 2 + V * (F.softmax(logits_o, -1) ** 2).sum(-1)).sum()
    G_norm2 = sum((g ** 2).sum() for g in (G if isinstance(G, list) else [G]))
    return {"lbk": ((delta ** 2).sum() / (A_norm2 * G_norm2)).item(), "sign_delta": delta.mean().item()}
