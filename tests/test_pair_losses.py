"""The preference-loss family (losses.PairLoss, TRL's names) checked against oracles that do not share its code:
autograd for the hand-derived coefficients and residuals, the published formulas worked by hand with ``math``,
and a real SGD step for the engine's one-step prediction. The file ends with the checks on bad input.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyld import TinyldError
from tinyld.data import IGNORE, Batch, make_batch
from tinyld.kernel import gradient, predict
from tinyld.losses import PAIR_LOSSES, PairLoss, dpo_loss, pair_loss, sequence_logprob
from tinyld.updates import DPOUpdate, lm_rows

F64 = torch.float64
NAMES = list(PAIR_LOSSES)
# every loss, and the label-smoothed form of the two that take label smoothing (cDPO, robust DPO)
VARIANTS = [(n, False) for n in NAMES] + [("sigmoid", True), ("robust", True)]
VARIANT_IDS = [n + ("+ls" if ls else "") for n, ls in VARIANTS]


# ------------------------------------------------------------------------------------- independent formulas
def _logsig(x: float) -> float:
    """log σ(x) in plain floats, stable on both sides."""
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _published(name, lc, lr, rc, rr, nc, nr, beta, eps=0.0, gamma=0.5, alpha=1.0, lam=50.0) -> float:
    """ℓ of one pair as the papers / TRL write it, in plain floats (not tinyld's code)."""
    rw, rl = lc - rc, lr - rr  # implicit rewards (over β) of the chosen and the rejected response
    if name == "sigmoid":  # Rafailov et al.; TRL's label smoothing (cDPO)
        return -(1 - eps) * _logsig(beta * (rw - rl)) - eps * _logsig(-beta * (rw - rl))
    if name == "robust":  # TRL's robust DPO (Chowdhury et al.)
        return (-(1 - eps) * _logsig(beta * (rw - rl)) + eps * _logsig(-beta * (rw - rl))) / (1 - 2 * eps)
    if name == "hinge":  # TRL: relu(1 − β·m)
        return max(0.0, 1 - beta * (rw - rl))
    if name == "ipo":  # TRL: log-probs averaged over the tokens, (m̄ − 1/(2β))²
        return (rw / nc - rl / nr - 1 / (2 * beta)) ** 2
    if name == "rpo":  # DPO + α · NLL(y⁺), the NLL a mean over the chosen tokens
        return -_logsig(beta * (rw - rl)) + alpha * (-lc / nc)
    if name == "simpo":  # Meng et al.: −log σ(β/|y_w| log π(y_w) − β/|y_l| log π(y_l) − γ)
        return -_logsig(beta / nc * lc - beta / nr * lr - gamma)
    if name == "dpop":  # Pal et al. (Smaug): −log σ(β[(r⁺ − r⁻) − λ·max(0, log π_ref(y⁺) − log π(y⁺))])
        return -_logsig(beta * ((rw - rl) - lam * max(0.0, rc - lc)))
    raise AssertionError(name)


def _autograd_coefficients(loss: PairLoss, lc, lr, rc, rr, nc, nr):
    """(c⁺, c⁻) = (−∂ℓ/∂lc, +∂ℓ/∂lr) by autograd through per_pair."""
    lc, lr = lc.clone().requires_grad_(True), lr.clone().requires_grad_(True)
    gc, gr = torch.autograd.grad(loss.per_pair(lc, lr, rc, rr, nc, nr).sum(), (lc, lr))
    return -gc, gr


# --------------------------------------------------------------------------- 1. coefficients == autograd
LOGP = st.floats(-60.0, -0.01)
PAIRS = st.lists(st.tuples(LOGP, LOGP, LOGP, LOGP, st.floats(1.0, 40.0), st.floats(1.0, 40.0)),
                 min_size=1, max_size=5)
PARAMS = st.fixed_dictionaries({"beta": st.floats(0.01, 5.0), "gamma": st.floats(0.0, 3.0),
                                "alpha": st.floats(0.0, 3.0), "lam": st.floats(0.0, 100.0)})


def _make(name, smoothed, params, eps):
    keep = {"beta": params["beta"]}
    keep.update({"simpo": {"gamma": params["gamma"]}, "rpo": {"alpha": params["alpha"]},
                 "dpop": {"lam": params["lam"]}}.get(name, {}))
    if smoothed:
        keep["label_smoothing"] = eps
    return pair_loss(name, **keep)


@pytest.mark.parametrize("name,smoothed", VARIANTS, ids=VARIANT_IDS)
@settings(max_examples=40, deadline=None)
@given(pairs=PAIRS, params=PARAMS, eps=st.floats(0.01, 0.45))
def test_coefficients_equal_autograd_and_per_pair_equals_published(name, smoothed, pairs, params, eps):
    loss = _make(name, smoothed, params, eps)
    lc, lr, rc, rr, nc, nr = (torch.tensor(c, dtype=F64) for c in zip(*pairs))  # each (B,)
    cp, cm = loss.coefficients(lc, lr, rc, rr, nc, nr)
    ap, am = _autograd_coefficients(loss, lc, lr, rc, rr, nc, nr)
    torch.testing.assert_close(cp, ap, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(cm, am, rtol=1e-9, atol=1e-12)
    # ℓ itself, pair by pair, against the published formula in plain floats; value() is their mean
    ell = loss.per_pair(lc, lr, rc, rr, nc, nr)
    want = [_published(name, *p, beta=loss.beta, eps=loss.label_smoothing, gamma=loss.gamma, alpha=loss.alpha,
                       lam=loss.lam) for p in pairs]
    torch.testing.assert_close(ell, torch.tensor(want, dtype=F64), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(loss.value(lc, lr, rc, rr, nc, nr), ell.mean(), rtol=1e-14, atol=0)
    # every loss but SimPO uses the reference; SimPO's ℓ does not move with rc, rr
    assert loss.uses_reference == (name != "simpo")
    if name == "simpo":
        assert torch.equal(loss.per_pair(lc, lr, rc - 0.7, rr + 0.3, nc, nr), ell)
    assert loss.note == PAIR_LOSSES[name]


def test_kinks_take_the_documented_one_sided_value():
    # hinge at βm = 1 exactly (β = 0.5, m = 2): the margin is met, the coefficient is 0, as torch.relu's gradient
    one = lambda x: torch.tensor([x], dtype=F64)  # noqa: E731
    args = (one(-1.0), one(-3.0), one(-2.0), one(-2.0), one(3.0), one(4.0))  # m = (−1+2) − (−3+2) = 2
    h = pair_loss("hinge", beta=0.5)
    assert h.per_pair(*args).item() == 0.0
    cp, cm = h.coefficients(*args)
    assert cp.item() == 0.0 and cm.item() == 0.0
    ap, am = _autograd_coefficients(h, *args)
    assert ap.item() == 0.0 and am.item() == 0.0
    # dpop at lc = rc: the penalty is not active, so c⁺ = βσ(−h) without the factor (1 + λ)
    args = (one(-4.0), one(-6.0), one(-4.0), one(-5.0), one(3.0), one(4.0))  # m = 0 − (−1) = 1, h = βm
    d = pair_loss("dpop", beta=0.5, lam=50.0)
    cp, cm = d.coefficients(*args)
    s = 1 / (1 + math.exp(0.5))  # σ(−0.5)
    assert cp.item() == pytest.approx(0.5 * s, rel=1e-12) and cm.item() == pytest.approx(0.5 * s, rel=1e-12)
    ap, am = _autograd_coefficients(d, *args)
    assert ap.item() == pytest.approx(cp.item(), rel=1e-12) and am.item() == pytest.approx(cm.item(), rel=1e-12)
    # … and just below the reference the factor (1 + λ) switches on
    cp2, _ = d.coefficients(one(-4.0 - 1e-9), *args[1:])
    assert cp2.item() == pytest.approx(0.5 * 51 * s, rel=1e-6)


# ------------------------------------------------------------- 2. residuals G on the logits == autograd
class FreeLogits(torch.nn.Module):
    """A 'model' whose logits are its parameters: one (B, T, V) table per input batch, so ∂L/∂param = ∂L/∂z."""

    def __init__(self, tables):
        super().__init__()
        self.keys = [idx for idx, _ in tables]
        self.z = torch.nn.ParameterList([torch.nn.Parameter(z.clone()) for _, z in tables])

    def forward(self, idx):
        for key, z in zip(self.keys, self.z):
            if key is idx:
                return z
        raise KeyError("unknown input batch")


def _random_batch(g, B, T, V, lengths):
    """A batch whose row b scores ``lengths[b]`` positions after a 2-token prompt, then padding."""
    idx = torch.randint(0, V, (B, T), generator=g)
    t = torch.full((B, T), IGNORE, dtype=torch.long)
    for b, n in enumerate(lengths):
        t[b, 2:2 + n] = torch.randint(0, V, (n,), generator=g)
    return Batch(idx, t), 3 * torch.randn(B, T, V, generator=g, dtype=F64)


def _seq_logp(z, batch):
    """Σ over scored positions of log softmax(z)[target], computed here without tinyld: (B,)."""
    lp = F.log_softmax(z, -1).gather(-1, batch.targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (lp * batch.mask).sum(1)


@pytest.mark.parametrize("name,smoothed", VARIANTS, ids=VARIANT_IDS)
@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), beta=st.floats(0.05, 2.0), weight=st.floats(0.5, 2.0),
       eps=st.floats(0.05, 0.45))
def test_residuals_equal_autograd_on_the_logits_and_pull_the_right_way(name, smoothed, seed, beta, weight, eps):
    g = torch.Generator().manual_seed(seed)
    B, T, V = 3, 8, 11
    bc, zc = _random_batch(g, B, T, V, [5, 2, 4])  # chosen and rejected lengths differ within each pair
    br, zr = _random_batch(g, B, T, V, [3, 6, 1])
    with torch.no_grad():  # references near the policy: margins of both signs, dpop below and above π_ref
        rc = (_seq_logp(zc, bc) + 3 * torch.randn(B, generator=g, dtype=F64)).clamp(max=-1e-3)
        rr = (_seq_logp(zr, br) + 3 * torch.randn(B, generator=g, dtype=F64)).clamp(max=-1e-3)
    params = {"label_smoothing": eps} if smoothed else {}
    up = DPOUpdate(lm_rows(bc), lm_rows(br), rc, rr, beta=beta, weight=weight, loss=name, **params)
    model = FreeLogits([(bc.idx, zc), (br.idx, zr)])
    up.loss(model).backward()  # the autograd oracle: ∂L/∂z for every logit
    (_, _, Gc), (_, _, Gr) = up.residuals(model)
    torch.testing.assert_close(Gc, model.z[0].grad[bc.mask], rtol=1e-9, atol=1e-13)
    torch.testing.assert_close(Gr, model.z[1].grad[br.mask], rtol=1e-9, atol=1e-13)
    assert torch.count_nonzero(model.z[0].grad[~bc.mask]) == 0  # prompt and padding get nothing

    # signs: c⁺ > 0 pulls each chosen target up (G at it < 0), c⁻ > 0 pushes each rejected target down (G > 0)
    ap, am = _autograd_coefficients(up.pair_loss, _seq_logp(zc, bc), _seq_logp(zr, br), rc, rr,
                                    bc.mask.sum(1).to(F64), br.mask.sum(1).to(F64))
    for batch, G, c, sign in ((bc, Gc, ap, -1), (br, Gr, am, +1)):
        at_target = G.gather(1, batch.targets[batch.mask][:, None])[:, 0]  # (N,)
        group = torch.arange(B)[:, None].expand(B, T)[batch.mask]  # (N,)
        want = sign * torch.sign(c)[group]
        assert torch.equal(torch.sign(at_target), want), (name, c, at_target)
        assert torch.equal(G[(c == 0)[group]], torch.zeros_like(G[(c == 0)[group]]))  # a met margin stops


def test_sigmoid_is_the_classic_dpo_loss():
    g = torch.Generator().manual_seed(3)
    bc, zc = _random_batch(g, 2, 7, 9, [4, 3])
    br, zr = _random_batch(g, 2, 7, 9, [2, 5])
    rc, rr = torch.tensor([-9.0, -4.0], dtype=F64), torch.tensor([-7.0, -12.0], dtype=F64)
    up = DPOUpdate(lm_rows(bc), lm_rows(br), rc, rr, beta=0.3)
    want = dpo_loss(sequence_logprob(zc, bc.targets), sequence_logprob(zr, br.targets), rc, rr, 0.3)
    torch.testing.assert_close(up.loss(FreeLogits([(bc.idx, zc), (br.idx, zr)])), want, rtol=1e-14, atol=0)


# ----------------------------------------------------------------- 3. the published formulas, by hand
# One pair: log π(y⁺) = −4, log π(y⁻) = −6, log π_ref(y⁺) = log π_ref(y⁻) = −5, |y⁺| = 2, |y⁻| = 3, β = 0.5.
# Rewards over β: r⁺ = −4 + 5 = 1, r⁻ = −6 + 5 = −1, so the margin m = 2 and βm = 1.
LC, LR, RC, RR, NC, NR = -4.0, -6.0, -5.0, -5.0, 2.0, 3.0


def _one(loss, lc=LC, lr=LR, rc=RC, rr=RR, nc=NC, nr=NR):
    t = [torch.tensor([v], dtype=F64) for v in (lc, lr, rc, rr, nc, nr)]
    cp, cm = loss.coefficients(*t)
    return loss.per_pair(*t).item(), cp.item(), cm.item()


def _sig(x):
    return 1 / (1 + math.exp(-x))


def test_hand_sigmoid_dpo():
    ell, cp, cm = _one(pair_loss("sigmoid", beta=0.5))
    want = -math.log(_sig(0.5 * ((LC - RC) - (LR - RR))))  # Rafailov et al. eq. 7
    assert ell == pytest.approx(want, rel=1e-12) and ell == pytest.approx(0.31326168751822286, rel=1e-12)
    assert cp == pytest.approx(0.5 * _sig(-1.0), rel=1e-12) and cm == pytest.approx(cp, rel=1e-12)
    # at m = 0 the pull and the push are both β/2
    ell0, cp0, cm0 = _one(pair_loss("sigmoid", beta=0.5), lc=-5.0, lr=-5.0)
    assert ell0 == pytest.approx(math.log(2), rel=1e-12) and cp0 == pytest.approx(0.25) and cm0 == pytest.approx(0.25)


def test_hand_sigmoid_with_label_smoothing_cdpo():
    ell, cp, cm = _one(pair_loss("sigmoid", beta=0.5, label_smoothing=0.1))
    want = -0.9 * math.log(_sig(1.0)) - 0.1 * math.log(_sig(-1.0))  # TRL: −(1−ε)logσ(βm) − ε logσ(−βm)
    assert ell == pytest.approx(want, rel=1e-12) and ell == pytest.approx(0.41326168751822284, rel=1e-12)
    assert cp == pytest.approx(0.5 * (0.9 * _sig(-1.0) - 0.1 * _sig(1.0)), rel=1e-12) and cm == cp
    assert cp == pytest.approx(0.08447071068499756, rel=1e-12)
    # at m = 0: β(1 − 2ε)/2 = 0.2; and with a large margin cDPO pulls back: the coefficient turns negative
    assert _one(pair_loss("sigmoid", beta=0.5, label_smoothing=0.1), lc=-5.0, lr=-5.0)[1] == pytest.approx(0.2)
    assert _one(pair_loss("sigmoid", beta=0.5, label_smoothing=0.1), lc=-1.0, lr=-20.0)[1] < 0


def test_hand_robust():
    ell, cp, cm = _one(pair_loss("robust", beta=0.5, label_smoothing=0.1))
    want = (-0.9 * math.log(_sig(1.0)) + 0.1 * math.log(_sig(-1.0))) / 0.8  # TRL's robust loss
    assert ell == pytest.approx(want, rel=1e-12) and ell == pytest.approx(0.1882616875182228, rel=1e-12)
    assert cp == pytest.approx(0.5 * (0.9 * _sig(-1.0) + 0.1 * _sig(1.0)) / 0.8, rel=1e-12) and cm == cp
    assert cp == pytest.approx(0.19697071068499752, rel=1e-12)
    # at m = 0: β/(2(1 − 2ε)) = 0.3125; with a huge margin it still pushes (c > 0)
    assert _one(pair_loss("robust", beta=0.5, label_smoothing=0.1), lc=-5.0, lr=-5.0)[1] == pytest.approx(0.3125)
    assert _one(pair_loss("robust", beta=0.5, label_smoothing=0.1), lc=-1.0, lr=-40.0)[1] > 0


def test_hand_hinge():
    ell, cp, cm = _one(pair_loss("hinge", beta=0.25))  # βm = 0.5 < 1: relu(1 − 0.5) = 0.5, slope β
    assert ell == pytest.approx(max(0.0, 1 - 0.25 * 2.0)) and ell == 0.5
    assert cp == 0.25 and cm == 0.25
    ell, cp, cm = _one(pair_loss("hinge", beta=0.8))  # βm = 1.6 ≥ 1: the margin is met, nothing moves
    assert ell == 0.0 and cp == 0.0 and cm == 0.0


def test_hand_ipo():
    ell, cp, cm = _one(pair_loss("ipo", beta=0.5))
    mbar = (LC - RC) / NC - (LR - RR) / NR  # 1/2 + 1/3 = 5/6 (TRL averages log-probs over tokens for IPO)
    assert ell == pytest.approx((mbar - 1 / (2 * 0.5)) ** 2, rel=1e-12) and ell == pytest.approx(1 / 36, rel=1e-12)
    assert cp == pytest.approx(2 * (1 - mbar) / NC, rel=1e-12) and cp == pytest.approx(1 / 6, rel=1e-12)
    assert cm == pytest.approx(2 * (1 - mbar) / NR, rel=1e-12) and cm == pytest.approx(1 / 9, rel=1e-12)
    # past the target margin 1/(2β) the residual reverses: y⁻ is pulled up, y⁺ pushed down
    _, cp, cm = _one(pair_loss("ipo", beta=0.5), lc=-1.0, lr=-20.0)
    assert cp < 0 and cm < 0


def test_hand_rpo():
    ell, cp, cm = _one(pair_loss("rpo", beta=0.5, alpha=0.5))
    want = -math.log(_sig(1.0)) + 0.5 * (-LC / NC)  # DPO + α · (mean NLL over y⁺'s tokens) = 0.3133 + 0.5 · 2
    assert ell == pytest.approx(want, rel=1e-12) and ell == pytest.approx(1.313261687518223, rel=1e-12)
    assert cp == pytest.approx(0.5 * _sig(-1.0) + 0.5 / NC, rel=1e-12) and cp == pytest.approx(0.38447071068499755)
    assert cm == pytest.approx(0.5 * _sig(-1.0), rel=1e-12) and cm == pytest.approx(0.13447071068499755)


def test_hand_simpo():
    ell, cp, cm = _one(pair_loss("simpo", beta=2.0, gamma=0.5))
    h = 2.0 / NC * LC - 2.0 / NR * LR - 0.5  # −4 + 4 − 0.5 = −0.5 (Meng et al. eq. 6)
    assert ell == pytest.approx(-math.log(_sig(h)), rel=1e-12) and ell == pytest.approx(0.9740769841801067, rel=1e-12)
    assert cp == pytest.approx(2.0 * _sig(-h) / NC, rel=1e-12) and cp == pytest.approx(0.6224593312018546)
    assert cm == pytest.approx(2.0 * _sig(-h) / NR, rel=1e-12) and cm == pytest.approx(0.41497288746790306)
    # no reference: any rc, rr give the same numbers
    assert _one(pair_loss("simpo", beta=2.0, gamma=0.5), rc=-0.1, rr=-50.0) == (ell, cp, cm)


def test_hand_dpop():
    # above the reference (lc = −4 > rc = −5) the penalty is 0: DPOP is DPO
    ell, cp, cm = _one(pair_loss("dpop", beta=0.5, lam=2.0))
    assert ell == pytest.approx(0.31326168751822286, rel=1e-12) and cp == pytest.approx(0.5 * _sig(-1.0))
    assert cm == pytest.approx(cp, rel=1e-12)
    # below it: lc = −6 < rc = −5, lr = −9, rr = −5: r⁺ − r⁻ = −1 + 4 = 3, penalty λ·max(0, −5 + 6) = 2
    ell, cp, cm = _one(pair_loss("dpop", beta=0.5, lam=2.0), lc=-6.0, lr=-9.0)
    h = 0.5 * ((-6.0 + 5.0) - (-9.0 + 5.0) - 2.0 * max(0.0, -5.0 + 6.0))  # Pal et al. eq. 3: h = 0.5
    assert ell == pytest.approx(-math.log(_sig(h)), rel=1e-12) and ell == pytest.approx(0.4740769841801067)
    assert cp == pytest.approx(0.5 * (1 + 2.0) * _sig(-h), rel=1e-12) and cp == pytest.approx(0.566311003197218)
    assert cm == pytest.approx(0.5 * _sig(-h), rel=1e-12) and cm == pytest.approx(0.1887703343990727)


def test_every_loss_has_a_hand_test():
    here = globals()
    assert all(f"test_hand_{n}" in here or any(k.startswith(f"test_hand_{n}_") for k in here) for n in NAMES)


# ---------------------------------------------------------- 4. one-step prediction vs a real SGD step
# (name, label-smoothed, shift_c): log π_ref(y⁺) = log π(y⁺) + shift_c, so dpop runs below (0.5) and above (−0.5)
STEP_CASES = [(n, ls, 0.5) for n, ls in VARIANTS] + [("dpop", False, -0.5)]
STEP_IDS = VARIANT_IDS + ["dpop-above"]


def _step_setup(world, wtok, model, name, smoothed, shift_c):
    it = world.train_items()
    prompts = [it[0].prompt, it[3].prompt]
    bc = make_batch(wtok, prompts, [it[0].chosen, it[3].chosen])  # 6 and 5 scored tokens
    br = make_batch(wtok, prompts, [it[4].rejected, it[1].rejected])  # 7 and 7
    with torch.no_grad():
        lc, lr = sequence_logprob(model(bc.idx), bc.targets), sequence_logprob(model(br.idx), br.targets)
    # π_ref(y⁺) = π(y⁺)·e^{shift_c}: shift_c > 0 puts the policy below the reference (dpop's penalty active)
    params = {"label_smoothing": 0.2} if smoothed else {}
    up = DPOUpdate(lm_rows(bc), lm_rows(br), lc + shift_c, lr + 0.3, beta=0.1, loss=name, **params)
    observed = lm_rows(make_batch(wtok, [it[0].prompt, it[3].prompt, it[5].prompt],
                                  [it[0].chosen, it[1].rejected, it[5].chosen]))
    return up, observed


def _real_change(model, update, observed, eta):
    """Δ log π at the observed rows after one plain SGD step on update.loss, by autograd: (N_o, V)."""
    stepped = copy.deepcopy(model)
    params = list(stepped.parameters())
    grads = torch.autograd.grad(update.loss(stepped), params)
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.sub_(eta * g)
        return F.log_softmax(observed.logits(stepped), -1) - F.log_softmax(observed.logits(model), -1)


@pytest.mark.parametrize("name,smoothed,shift_c", STEP_CASES, ids=STEP_IDS)
def test_one_step_prediction_error_shrinks_like_eta_squared(tiny64, wtok, world, name, smoothed, shift_c):
    up, observed = _step_setup(world, wtok, tiny64, name, smoothed, shift_c)
    # η so that the biggest predicted change of one observed token's log-prob is about 0.05 nats
    eta0 = 0.05 / predict(tiny64, observed, up, 1.0).abs().max().item()
    abs_err, rel_err = [], []
    for eta in (eta0, eta0 / 2, eta0 / 4):
        pred, actual = predict(tiny64, observed, up, eta), _real_change(tiny64, up, observed, eta)
        abs_err.append((pred - actual).norm().item())
        rel_err.append(abs_err[-1] / actual.norm().item())
    q = [b / a for a, b in zip(abs_err, abs_err[1:])]
    assert all(0.18 < x < 0.35 for x in q), (q, rel_err)  # halving η quarters the error: it is second order
    assert rel_err[-1] < 0.02, rel_err  # and the first-order term is right


@pytest.mark.parametrize("name,smoothed", VARIANTS, ids=VARIANT_IDS)
def test_parameter_gradient_and_split_match_autograd(tiny64, wtok, world, name, smoothed):
    up, _ = _step_setup(world, wtok, tiny64, name, smoothed, 0.5)
    tiny64.zero_grad()
    up.loss(tiny64).backward()
    want = {k: p.grad.clone() for k, p in tiny64.named_parameters()}
    tiny64.zero_grad()
    g = gradient(tiny64, up)  # J_uᵀ G through the hand-derived residuals
    parts = [gradient(tiny64, sub) for sub in up.split()]  # one update per pair, same loss and parameters
    for k in want:
        torch.testing.assert_close(g[k], want[k], rtol=1e-9, atol=1e-13)
        torch.testing.assert_close(sum(p[k] for p in parts), want[k], rtol=1e-9, atol=1e-13)
    assert all(sub.pair_loss == up.pair_loss for sub in up.split())


# ------------------------------------------------------------------------------------- 5. bad input
def test_unknown_loss_name_lists_every_loss():
    for bad in ("dpo", "kto", "", None, 3):
        with pytest.raises(TinyldError) as e:
            pair_loss(bad)
        assert all(n in str(e.value) for n in PAIR_LOSSES), str(e.value)
    with pytest.raises(TinyldError, match="unknown preference loss 'kto'"):
        PairLoss("kto")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("beta", [0, 0.0, -1.0, float("nan"), float("inf"), True])
def test_beta_must_be_positive_and_finite(name, beta):
    with pytest.raises(TinyldError, match="beta must be a positive finite number"):
        pair_loss(name, beta=beta)


def test_hyper_parameter_checks():
    for name in ("hinge", "ipo", "rpo", "simpo", "dpop"):
        with pytest.raises(TinyldError, match=f"label_smoothing is for the sigmoid.*not '{name}'"):
            pair_loss(name, label_smoothing=0.1)
        assert pair_loss(name, label_smoothing=0.0).label_smoothing == 0.0  # 0 is "off", allowed everywhere
    for name in ("sigmoid", "robust"):
        for eps in (0.5, 0.7, 1.0, -0.1, float("nan")):
            with pytest.raises(TinyldError, match="label_smoothing must be a finite number in"):
                pair_loss(name, label_smoothing=eps)
        assert pair_loss(name, label_smoothing=0.49).label_smoothing == 0.49
    for field in ("gamma", "alpha", "lam"):
        with pytest.raises(TinyldError, match=f"{field} must be"):
            pair_loss("sigmoid", **{field: -1.0})
    with pytest.raises(TinyldError, match=r"unknown preference-loss parameter\(s\) \['gama'\]"):
        pair_loss("simpo", gama=0.5)
    with pytest.raises(TinyldError, match="not both"):
        pair_loss(PairLoss("ipo"), beta=0.2)
    p = PairLoss("ipo", beta=0.2)
    assert pair_loss(p) is p


def test_dpo_update_reference_and_parameter_checks(world, wtok, tiny64):
    it = world.train_items()
    bc = make_batch(wtok, [it[0].prompt], [it[0].chosen])
    br = make_batch(wtok, [it[0].prompt], [it[4].rejected])  # 6 and 7 scored tokens
    c, r = lm_rows(bc), lm_rows(br)
    for name in ("sigmoid", "hinge", "ipo", "robust", "rpo", "dpop"):
        with pytest.raises(TinyldError, match="needs the reference.*simpo"):
            DPOUpdate(c, r, loss=name)
        with pytest.raises(TinyldError, match="needs the reference.*simpo"):
            DPOUpdate(c, r, ref_chosen=-3.0, loss=name)
    with pytest.raises(TinyldError, match="unknown preference loss 'kto'.*" + ".*".join(PAIR_LOSSES)):
        DPOUpdate(c, r, -3.0, -4.0, loss="kto")
    with pytest.raises(TinyldError, match=r"\['gama'\]"):
        DPOUpdate(c, r, loss="simpo", gama=1.0)
    with pytest.raises(TinyldError, match="beta must be a positive finite number"):
        DPOUpdate(c, r, -3.0, -4.0, beta=-1.0, loss="ipo")
    with pytest.raises(TinyldError, match="label_smoothing"):
        DPOUpdate(c, r, -3.0, -4.0, loss="ipo", label_smoothing=0.1)
    # SimPO needs no reference: it builds, its loss is the published number, and its prediction is finite
    up = DPOUpdate(c, r, loss="simpo", beta=2.0, gamma=0.5)
    with torch.no_grad():
        lc, lr = (sequence_logprob(tiny64(b.idx), b.targets).item() for b in (bc, br))
    want = _published("simpo", lc, lr, 0.0, 0.0, 6, 7, beta=2.0, gamma=0.5)
    assert up.loss(tiny64).item() == pytest.approx(want, rel=1e-12)
    assert torch.isfinite(predict(tiny64, c, up, 1e-3)).all()
