"""The A·K·G engine against independent oracles: autograd, closed forms, finite differences, real steps."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call, jvp

from tinyld import GPT, GPTConfig, TinyldError
from tinyld.data import IGNORE, Batch, make_batch
from tinyld.dynamics import contributions, one_step, proxies
from tinyld.kernel import apply_A, gradient, kernel, kernel_restricted, kg, predict, softmax_jacobian
from tinyld.losses import dpo_loss, dpo_residual, sequence_logprob, sft_loss, sft_residual
from tinyld.updates import DPOUpdate, ResidualUpdate, SFTUpdate, class_rows, lm_rows, make_update

SETTINGS = dict(max_examples=15, deadline=None)


# ------------------------------------------------------------------------------------------------ A
@settings(max_examples=60, deadline=None)
@given(V=st.integers(2, 40), scale=st.floats(0.01, 30.0), seed=st.integers(0, 10_000))
def test_A_properties(V, scale, seed):
    z = scale * torch.randn(3, V, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    A = softmax_jacobian(z)  # (3, V, V)
    pi = z.softmax(-1)
    ones = torch.ones(V, dtype=torch.float64)
    torch.testing.assert_close(A @ ones, torch.zeros(3, V, dtype=torch.float64), atol=1e-12, rtol=0)  # A·1 = 0
    torch.testing.assert_close((pi.unsqueeze(1) @ A).squeeze(1), torch.zeros(3, V, dtype=torch.float64),
                               atol=1e-12, rtol=0)  # πᵀA = 0
    fro2 = (A ** 2).sum((-2, -1))
    torch.testing.assert_close(fro2, V - 2 + V * (pi ** 2).sum(-1), rtol=1e-10, atol=1e-10)  # ‖A‖²_F
    # A is the Jacobian of log softmax (autograd oracle), and apply_A applies it
    J = torch.autograd.functional.jacobian(lambda x: F.log_softmax(x, -1), z[0])
    torch.testing.assert_close(A[0], J)
    v = torch.randn(3, V, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    torch.testing.assert_close(apply_A(z, v), (A @ v.unsqueeze(-1)).squeeze(-1))


# ------------------------------------------------------------------------------------------------ G
def _logits_targets(seed, B=3, T=7, V=11):
    g = torch.Generator().manual_seed(seed)
    z = 3 * torch.randn(B, T, V, generator=g, dtype=torch.float64)
    t = torch.randint(0, V, (B, T), generator=g)
    t[:, :2] = IGNORE  # a prompt
    t[0, -1] = IGNORE  # padding
    return z, t


@settings(**SETTINGS)
@given(seed=st.integers(0, 10_000))
def test_sft_residual_equals_autograd(seed):
    z, t = _logits_targets(seed)
    z.requires_grad_(True)
    sft_loss(z, t).backward()
    torch.testing.assert_close(sft_residual(z.detach(), t), z.grad, rtol=1e-12, atol=1e-14)
    assert torch.count_nonzero(sft_residual(z.detach(), t)[t == IGNORE]) == 0


@settings(**SETTINGS)
@given(seed=st.integers(0, 10_000), beta=st.floats(0.01, 2.0))
def test_dpo_residuals_equal_autograd_and_signs(seed, beta):
    zc, tc = _logits_targets(seed)
    zr, tr = _logits_targets(seed + 1)
    ref_c, ref_r = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    zc.requires_grad_(True), zr.requires_grad_(True)
    dpo_loss(sequence_logprob(zc, tc), sequence_logprob(zr, tr), ref_c, ref_r, beta).backward()
    Gc, Gr = dpo_residual(zc.detach(), tc, zr.detach(), tr, ref_c, ref_r, beta)
    torch.testing.assert_close(Gc, zc.grad, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(Gr, zr.grad, rtol=1e-10, atol=1e-14)
    # the chosen half pulls y⁺ up (its own logit gets a negative G entry), the rejected half pushes y⁻ down
    m = tc != IGNORE
    assert (Gc.gather(-1, tc.clamp(min=0).unsqueeze(-1)).squeeze(-1)[m] <= 0).all()
    m = tr != IGNORE
    assert (Gr.gather(-1, tr.clamp(min=0).unsqueeze(-1)).squeeze(-1)[m] >= 0).all()


# ------------------------------------------------------------------------------------------------ models
def _tiny(V=12, seed=0, preset="tiny"):
    torch.manual_seed(seed)
    return GPT(GPTConfig.preset(preset, vocab_size=V, block_size=16)).double().eval()


def _rows(V, seed, B=2, T=6, n_prompt=3):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, V, (B, T), generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[:, : n_prompt - 1] = IGNORE
    return lm_rows(Batch(idx, targets))


class MLP(torch.nn.Module):
    def __init__(self, D=5, H=7, V=4):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(D, H), torch.nn.Tanh(), torch.nn.Linear(H, V))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("kind", ["sft", "dpo", "ce"])
def test_gradient_through_residuals_equals_autograd(kind):
    if kind == "ce":
        torch.manual_seed(0)
        m = MLP().double()
        x = torch.randn(6, 5, dtype=torch.float64)
        up = SFTUpdate(class_rows(x, torch.randint(0, 4, (6,))))
    else:
        m = _tiny()
        up = (SFTUpdate(_rows(12, 1)) if kind == "sft" else
              DPOUpdate(_rows(12, 1), _rows(12, 2), torch.tensor([-9.0, -8.0]), torch.tensor([-7.0, -12.0]), 0.5))
    g = gradient(m, up)
    m.zero_grad()
    up.loss(m).backward()
    for k, p in m.named_parameters():
        torch.testing.assert_close(g[k], p.grad, rtol=1e-10, atol=1e-13)


# ------------------------------------------------------------------------------------------------ K
def test_full_K_symmetric_psd_and_transpose():
    m = _tiny()
    ro, ru = _rows(12, 1), _rows(12, 2)
    Kxx = kernel(m, ro)  # (N, V, N, V)
    n = ro.n * 12
    M = Kxx.reshape(n, n)
    torch.testing.assert_close(M, M.T, rtol=1e-10, atol=1e-10)
    eig = torch.linalg.eigvalsh(M)
    assert eig.min() > -1e-8 * eig.max()
    Kou, Kuo = kernel(m, ro, ru), kernel(m, ru, ro)
    torch.testing.assert_close(Kou, Kuo.permute(2, 3, 0, 1), rtol=1e-10, atol=1e-10)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 1000))
def test_restricted_and_contracted_routes_agree_with_full_K(seed):
    m = _tiny(seed=seed % 3)
    ro, ru = _rows(12, seed), _rows(12, seed + 7)
    K = kernel(m, ro, ru)  # (N_o, V, N_u, V)
    g = torch.Generator().manual_seed(seed)
    sel_o = torch.stack([torch.randint(0, ro.n, (5,), generator=g), torch.randint(0, 12, (5,), generator=g)], 1)
    sel_u = torch.stack([torch.randint(0, ru.n, (4,), generator=g), torch.randint(0, 12, (4,), generator=g)], 1)
    Kr = kernel_restricted(m, ro, sel_o, ru, sel_u)  # (5, 4)
    torch.testing.assert_close(Kr, K[sel_o[:, 0], sel_o[:, 1]][:, sel_u[:, 0], sel_u[:, 1]], rtol=1e-9, atol=1e-10)
    up = SFTUpdate(ru)
    G = up.residuals(m)[0][2]  # (N_u, V)
    _, KG = kg(m, ro, up)  # (N_o, V)
    torch.testing.assert_close(KG, torch.einsum("avbw,bw->av", K, G), rtol=1e-9, atol=1e-11)


def test_classification_K_and_one_step():
    torch.manual_seed(0)
    m = MLP().double()
    x = torch.randn(8, 5, dtype=torch.float64)
    rows_u, rows_o = class_rows(x[:2], torch.tensor([1, 3])), class_rows(x[2:])
    K = kernel(m, rows_o, rows_u)  # (6, 4, 2, 4)
    assert K.shape == (6, 4, 2, 4)
    up = SFTUpdate(rows_u)
    pred = predict(m, rows_o, up, 1e-3)
    manual = -1e-3 * torch.einsum("nij,njbk,bk->ni", softmax_jacobian(m(x[2:])), K, up.residuals(m)[0][2])
    torch.testing.assert_close(pred, manual, rtol=1e-9, atol=1e-14)
    rep = one_step(m, up, class_rows(x[2:], torch.zeros(6, dtype=torch.long)), 1e-4)
    assert rep.err_full < 1e-3


# ------------------------------------------------------------------------------------------------ prediction
def test_predicted_change_conserves_probability(tiny64, wtok, world):
    it = world.train_items()
    ro = lm_rows(make_batch(wtok, [it[0].prompt, it[5].prompt], [it[0].rejected, it[5].chosen]))
    up = SFTUpdate(lm_rows(make_batch(wtok, [it[1].prompt], [it[1].chosen])))
    d = predict(tiny64, ro, up, 1e-2)  # (N_o, V)
    pi = tiny64(ro.inputs)[ro.index].softmax(-1)
    torch.testing.assert_close((pi * d).sum(-1), torch.zeros(ro.n, dtype=torch.float64), atol=1e-14, rtol=0)


@pytest.mark.parametrize("opt", [None, "adam", "rmsprop", "sgd-momentum"])
def test_error_shrinks_like_eta_squared(tiny64, wtok, world, opt):
    it = world.train_items()
    ro = lm_rows(make_batch(wtok, [it[0].prompt, it[7].prompt], [it[0].rejected, it[7].chosen]))
    up = SFTUpdate(lm_rows(make_batch(wtok, [it[0].prompt, it[3].prompt], [it[0].chosen, it[3].chosen])))
    errs = []
    base = 4e-5 if opt == "rmsprop" else 4e-4  # RMSprop's first step is ≈ 10·η·sign(g): 10× larger
    for eta in (base, base / 2, base / 4, base / 8):
        o = {None: None, "adam": lambda: torch.optim.Adam(tiny64.parameters(), lr=eta),
             "rmsprop": lambda: torch.optim.RMSprop(tiny64.parameters(), lr=eta),
             "sgd-momentum": lambda: torch.optim.SGD(tiny64.parameters(), lr=eta, momentum=0.9)}[opt]
        r = one_step(tiny64, up, ro, eta, optimizer=o() if o else None)
        errs.append((r.pred - r.actual).norm().item())
    ratios = [a / b for a, b in zip(errs, errs[1:])]
    assert all(3.3 < q < 4.7 for q in ratios), ratios  # halving η divides the error by ≈ 4


def test_sequence_change_is_sum_of_token_changes_and_matches_independent_paths(tiny64, wtok, world):
    it = world.train_items()
    b_o = make_batch(wtok, [it[0].prompt, it[9].prompt], [it[0].chosen, it[9].rejected])
    ro = lm_rows(b_o)
    up = SFTUpdate(lm_rows(make_batch(wtok, [it[0].prompt], [it[0].chosen])))
    eta = 1e-4
    before = sequence_logprob(tiny64(b_o.idx), b_o.targets).detach()
    r = one_step(tiny64, up, ro, eta, commit=True)
    after = sequence_logprob(tiny64(b_o.idx), b_o.targets).detach()
    torch.testing.assert_close(r.actual_seq, after - before, rtol=1e-9, atol=1e-12)  # actual: Σ tokens = Δ seq
    torch.testing.assert_close(r.pred_seq, torch.stack([r.per_position(s).sum() for s in range(2)]))


def test_prediction_matches_jvp_of_sequence_logprob(tiny64, wtok, world):
    it = world.train_items()
    b_o = make_batch(wtok, [it[2].prompt, it[9].prompt], [it[2].chosen, it[9].rejected])
    up = SFTUpdate(lm_rows(make_batch(wtok, [it[0].prompt], [it[0].chosen])))
    eta = 1e-3
    pred_seq = lm_rows(b_o).to_groups(
        predict(tiny64, lm_rows(b_o), up, eta).gather(1, b_o.targets[b_o.mask][:, None])[:, 0])
    tiny64.zero_grad()
    up.loss(tiny64).backward()
    params = {k: p.detach() for k, p in tiny64.named_parameters()}
    step = {k: -eta * p.grad for k, p in tiny64.named_parameters()}
    _, d = jvp(lambda p: sequence_logprob(functional_call(tiny64, p, (b_o.idx,)), b_o.targets), (params,), (step,))
    torch.testing.assert_close(pred_seq, d, rtol=1e-10, atol=1e-13)


@settings(max_examples=8, deadline=None)
@given(i=st.integers(0, 39), seed=st.integers(0, 3))
def test_small_sft_step_never_lowers_logp_of_its_own_target(wtok, world, i, seed):
    torch.manual_seed(seed)
    m = GPT(GPTConfig.preset("tiny", vocab_size=wtok.vocab_size)).double().eval()
    item = world.train_items()[i]
    rows = lm_rows(make_batch(wtok, [item.prompt], [item.chosen]))
    r = one_step(m, SFTUpdate(rows), rows, 1e-4)
    assert r.pred_seq.item() > 0 and r.actual_seq.item() > 0


def test_contributions_sum_to_batch_prediction(tiny64, wtok, world):
    it = world.train_items()
    ro = lm_rows(make_batch(wtok, [it[0].prompt, it[4].prompt, it[8].prompt], [it[0].rejected, it[4].chosen,
                                                                                it[30].chosen]))
    bu = make_batch(wtok, [it[0].prompt, it[1].prompt, it[2].prompt], [it[0].chosen, it[1].chosen, it[2].chosen])
    br = make_batch(wtok, [x.prompt for x in it[:3]], [x.rejected for x in it[:3]])
    for up in (SFTUpdate(lm_rows(bu)),
               DPOUpdate(lm_rows(bu), lm_rows(br), torch.tensor([-5.0, -6, -7]), torch.tensor([-9.0, -9, -9]), 0.1)):
        c = contributions(tiny64, up, ro, 1e-3)  # (3, 3)
        r = one_step(tiny64, up, ro, 1e-3)
        torch.testing.assert_close(c.sum(0), r.pred_seq, rtol=1e-9, atol=1e-13)


def test_proxies_closed_form():
    g = torch.Generator().manual_seed(0)
    z, d, G = (torch.randn(4, 6, generator=g, dtype=torch.float64) for _ in range(3))
    p = proxies(d, z, G)
    A = softmax_jacobian(z)
    assert p["lbk"] == pytest.approx((d ** 2).sum().item() / ((A ** 2).sum().item() * (G ** 2).sum().item()))
    assert p["sign_delta"] == pytest.approx(d.mean().item())


# ------------------------------------------------------------------------------------------------ GPT-2 size
@pytest.mark.slow
def test_gpt2_preset_one_step_and_routes(gpt2_64):
    m = gpt2_64
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 50257, (1, 6), generator=g)
    t = torch.randint(0, 50257, (1, 6), generator=g)
    t[:, :3] = IGNORE
    ro = lm_rows(Batch(idx, t))
    ru = lm_rows(Batch(idx.flip(1), t))
    # restricted vs contracted: a one-hot residual reads one column of K
    sel_o = torch.tensor([[0, 11], [2, 50256]])
    l, v = 1, 777
    G = torch.zeros(ru.n, 50257, dtype=torch.float64)
    G[l, v] = 1.0
    _, KG = kg(m, ro, ResidualUpdate(ru, G))  # (N_o, V) = K[:, :, l, v]
    Kr = kernel_restricted(m, ro, sel_o, ru, torch.tensor([[l, v]]))  # (2, 1)
    torch.testing.assert_close(Kr[:, 0], KG[sel_o[:, 0], sel_o[:, 1]], rtol=1e-9, atol=1e-12)
    # A properties and the one-step η² check on the full 50257-token vocabulary
    up = SFTUpdate(ru)
    reps = [one_step(m, up, ro, eta) for eta in (2e-5, 1e-5)]
    errs = [(r.pred - r.actual).norm().item() for r in reps]
    assert 3.3 < errs[0] / errs[1] < 4.7, errs
    d = reps[1].pred  # (N_o, V) the full-vocabulary prediction at η = 1e-5 (predict's result, kept by one_step)
    pi = m(ro.inputs)[ro.index].softmax(-1)
    assert (pi * d).sum(-1).abs().max() < 1e-12


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_inputs(tiny64, wtok, world):
    it = world.train_items()
    ro = lm_rows(make_batch(wtok, [it[0].prompt], [it[0].chosen]))
    up = SFTUpdate(ro)
    for eta in (0, -1e-3, float("nan"), float("inf")):
        with pytest.raises(TinyldError, match="eta must be a positive finite number"):
            predict(tiny64, ro, up, eta)
    with pytest.raises(TinyldError, match="unknown loss 'ppo'.*sft, ce, dpo"):
        make_update("ppo", ro)
    with pytest.raises(TinyldError, match="no response tokens"):
        lm_rows(Batch(ro.inputs, torch.full_like(ro.inputs, IGNORE)))
    from tinyld.tokenizers import GPT2BPE, WordTokenizer
    other = WordTokenizer(wtok.itos[3:] + ["zebra"])
    ro2 = lm_rows(make_batch(other, [it[0].prompt], [it[0].chosen]))
    with pytest.raises(TinyldError, match="different tokenizers"):
        predict(tiny64, ro2, up, 1e-3)
    with pytest.raises(TinyldError, match="129-token vocabulary but the model has vocab_size=128"):
        predict(tiny64, ro2, SFTUpdate(ro2), 1e-3)
    with pytest.raises(TinyldError, match=r"needs ≈.*GiB.*kernel_restricted.*kg\(\)/predict\(\)"):
        kernel(GPT(GPTConfig.preset("gpt2")), lm_rows(make_batch(GPT2BPE(), ["Hello"], [" world"])))
    drop = GPT(GPTConfig.preset("tiny", vocab_size=wtok.vocab_size, dropout=0.1)).double().train()
    with pytest.warns(UserWarning, match="dropout on.*model.eval"):
        predict(drop, ro, up, 1e-3)


def test_fast_attention_model_uses_math_kernel_for_jvp():
    slow = _tiny(V=12)
    torch.manual_seed(0)
    fast = GPT(GPTConfig.preset("tiny", vocab_size=12, block_size=16, fast=True)).double().eval()
    fast.load_state_dict(slow.state_dict())
    ro, up = _rows(12, 3), SFTUpdate(_rows(12, 4))
    torch.testing.assert_close(kg(fast, ro, up)[1], kg(slow, ro, up)[1], rtol=1e-9, atol=1e-12)


def test_commit_reports_the_same_step_and_keeps_it(wtok, world):
    it = world.train_items()
    ro = lm_rows(make_batch(wtok, [it[0].prompt, it[7].prompt], [it[0].rejected, it[7].chosen]))
    up = SFTUpdate(lm_rows(make_batch(wtok, [it[0].prompt], [it[0].chosen])))
    for opt in (None, "adam"):
        torch.manual_seed(0)
        m = GPT(GPTConfig.preset("tiny", vocab_size=wtok.vocab_size)).double().eval()
        mk = (lambda: None) if opt is None else (lambda: torch.optim.Adam(m.parameters(), lr=1e-4))
        before = [p.detach().clone() for p in m.parameters()]
        dry = one_step(m, up, ro, 1e-4, optimizer=mk())
        assert all(torch.equal(a, p) for a, p in zip(before, m.parameters()))  # restored
        kept = one_step(m, up, ro, 1e-4, optimizer=mk(), commit=True)
        assert not all(torch.equal(a, p) for a, p in zip(before, m.parameters()))  # the step stays
        torch.testing.assert_close(kept.pred, dry.pred, rtol=1e-12, atol=1e-15)
        assert kept.lbk == pytest.approx(dry.lbk, rel=1e-12)  # proxies are taken at θ, not θ'
