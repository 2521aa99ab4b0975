"""GRPO and Dr. GRPO (tinyld.rl, updates.GRPOUpdate) against independent routes: the advantages and the objective
worked by hand from the published formulas, the hand-derived residual against autograd on free logits, the
engine's one-step prediction against a real step (error ∝ η²), pass@k against counting subsets."""
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_pair_losses import F64, FreeLogits, _random_batch

from tinyld import TinyldError
from tinyld.data import make_batch
from tinyld.dynamics import contributions, one_step
from tinyld.rl import GRPOLoss, flat_groups, grpo_loss, unbiased_pass_at_k
from tinyld.updates import GRPOUpdate, lm_rows


def test_advantages_worked_by_hand():
    r = [[1, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 1]]
    s0 = math.sqrt((4 * 0.5 ** 2) / 3)  # the unbiased std of (1, 0, 0, 1)
    s2 = math.sqrt((3 * 0.25 ** 2 + 0.75 ** 2) / 3)
    want = [[0.5 / (s0 + 1e-4), -0.5 / (s0 + 1e-4), -0.5 / (s0 + 1e-4), 0.5 / (s0 + 1e-4)], [0, 0, 0, 0],
            [-0.25 / (s2 + 1e-4)] * 3 + [0.75 / (s2 + 1e-4)]]
    flat = lambda rows: [x for row in rows for x in row]  # noqa: E731
    assert flat(GRPOLoss("grpo").advantages(r).tolist()) == pytest.approx(flat(want), abs=1e-12)
    assert flat(GRPOLoss("dr_grpo").advantages(r).tolist()) == pytest.approx(
        [.5, -.5, -.5, .5] + [0] * 4 + [-.25, -.25, -.25, .75], abs=1e-15)
    assert flat_groups(r) == 1  # the group that is all correct teaches nothing, and nothing is divided by 0


def _objective_by_hand(name, clip, kl, logp, old, ref, adv, seqs, L=None):
    """The published objective, written out token by token with Python floats."""
    N = len(adv)
    total = 0.0
    for i, toks in enumerate(seqs):
        w = 1 / len(toks) if name == "grpo" else 1 / L
        for t in toks:
            rho = math.exp(logp[t] - old[t])
            term = -min(rho * adv[i], min(max(rho, 1 - clip), 1 + clip) * adv[i])
            u = ref[t] - logp[t]
            total += w * (term + kl * (math.exp(u) - u - 1))
    return total / N


@pytest.mark.parametrize("name", ["grpo", "dr_grpo"])
def test_the_objective_is_the_published_one(name):
    g = torch.Generator().manual_seed(0)
    seqs = [[0, 1, 2], [3, 4], [5, 6, 7, 8], [9]]  # four responses of 3, 2, 4 and 1 tokens
    seq = torch.tensor([i for i, s in enumerate(seqs) for _ in s])
    logp = -torch.rand(10, generator=g, dtype=F64) * 3
    old = logp + 0.4 * torch.randn(10, generator=g, dtype=F64)  # ratios inside and outside the clip range
    ref = logp + 0.3 * torch.randn(10, generator=g, dtype=F64)
    adv = torch.tensor([1.2, -0.7, 0.4, -0.9], dtype=F64)
    lengths = torch.tensor([3, 2, 4, 1])
    spec = GRPOLoss(name, clip=0.2, kl=0.05, max_len=6 if name == "dr_grpo" else None)
    want = _objective_by_hand(name, 0.2, 0.05, logp.tolist(), old.tolist(), ref.tolist(), adv.tolist(), seqs, L=6)
    assert spec.value(logp, old, ref, adv, seq, lengths).item() == pytest.approx(want, rel=1e-12)
    rho = torch.exp(logp - old)
    assert bool(((rho > 1.2) | (rho < 0.8)).any()), "the case must exercise the clip"


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), name=st.sampled_from(["grpo", "dr_grpo"]), clip=st.floats(0.05, 0.5),
       kl=st.sampled_from([0.0, 0.04, 0.5]), on_policy=st.booleans(), weight=st.floats(0.5, 2.0))
def test_residuals_equal_autograd_on_the_logits(seed, name, clip, kl, on_policy, weight):
    g = torch.Generator().manual_seed(seed)
    b, z = _random_batch(g, 4, 9, 11, [5, 2, 6, 3])  # one group of four sampled responses, lengths differ
    rows = lm_rows(b)
    with torch.no_grad():
        lp = torch.log_softmax(z[b.mask], -1).gather(-1, rows.labels[:, None])[:, 0]  # (N_tok,)
    old = None if on_policy else lp + 0.5 * torch.randn(rows.n, generator=g, dtype=F64)
    ref = lp + 0.5 * torch.randn(rows.n, generator=g, dtype=F64) if kl else None
    adv = grpo_loss(name).advantages([[1.0, 0.0, 1.0, 0.0]])[0]
    up = GRPOUpdate(rows, adv, old, ref, loss=name, clip=clip, kl=kl, weight=weight)
    model = FreeLogits([(b.idx, z)])
    up.loss(model).backward()
    (_, _, G), = up.residuals(model)
    torch.testing.assert_close(G, model.z[0].grad[b.mask], rtol=1e-9, atol=1e-13)
    if on_policy and not kl:  # a pull on every token of a rewarded sample, a push on every token of the others
        at_target = G.gather(1, rows.labels[:, None])[:, 0]
        assert torch.equal(torch.sign(at_target), -torch.sign(adv)[rows.group])


def _samples(world, wtok):
    """Four 'sampled' answers to one world question (its y⁺, y⁻ and two rephrases) and two observed answers."""
    it = world.train_items()[0]
    fam = world.probes(it)
    answers = [fam["chosen"], fam["rejected"], fam["gpts_chosen"], fam["gpts_rejected"]]
    rows = lm_rows(make_batch(wtok, [it.prompt] * 4, answers))
    ro = lm_rows(make_batch(wtok, [it.prompt, world.train_items()[3].prompt], [fam["chosen"], fam["hum"]]))
    return rows, ro


@pytest.mark.parametrize("name", ["grpo", "dr_grpo"])
def test_one_step_error_shrinks_like_eta_squared(tiny64, wtok, world, name):
    rows, ro = _samples(world, wtok)
    up = GRPOUpdate(rows, grpo_loss(name).advantages([[1.0, 0.0, 1.0, 0.0]])[0], loss=name)
    errs = []
    for eta in (4e-3, 2e-3, 1e-3, 5e-4):
        r = one_step(tiny64, up, ro, eta)
        errs.append((r.pred - r.actual).norm().item())
    ratios = [a / b for a, b in zip(errs, errs[1:])]
    assert all(3.3 < q < 4.7 for q in ratios), ratios  # halving η divides the error by ≈ 4
    parts = contributions(tiny64, up, ro, 1e-3)  # which sample moved each observed answer, adding up to the step
    torch.testing.assert_close(parts.sum(0), one_step(tiny64, up, ro, 1e-3).pred_seq, rtol=1e-8, atol=1e-12)


def test_pass_at_k_counts_subsets():
    for n, c in ((6, 0), (6, 2), (7, 4), (5, 5)):
        correct = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(correct, k))
            want = sum(any(s) for s in subsets) / len(subsets)
            assert unbiased_pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("make, says", [
    (lambda: GRPOLoss("grpo").advantages([[1.0], [0.0]]), "at least 2 samples"),
    (lambda: GRPOLoss("grpo").advantages([[1.0, float("nan")]]), "rewards must be finite, got nan"),
    (lambda: GRPOLoss("grpo").advantages([1.0, 0.0]), "(groups, G) table"),
    (lambda: GRPOLoss("grpo", clip=0.0), "grpo clip must be"),
    (lambda: GRPOLoss("grpo", clip=1.0), "grpo clip must be"),
    (lambda: GRPOLoss("dr_grpo", kl=-0.1), "dr_grpo kl must be"),
    (lambda: GRPOLoss("ppo"), "unknown RL loss 'ppo'"),
    (lambda: GRPOLoss("grpo", max_len=10), "max_len is Dr. GRPO's"),
    (lambda: grpo_loss("grpo", beta=0.1), "unknown RL-loss parameter(s) ['beta']"),
])
def test_bad_input_is_one_clear_error(make, says):
    with pytest.raises(TinyldError) as err:
        make()
    assert says in str(err.value)


def test_an_update_refuses_what_it_cannot_use(world, wtok):
    rows, _ = _samples(world, wtok)
    with pytest.raises(TinyldError, match="adv must hold one advantage per response"):
        GRPOUpdate(rows, [1.0, -1.0])
    with pytest.raises(TinyldError, match="needs the reference's log-probs"):
        GRPOUpdate(rows, [1.0, -1.0, 1.0, -1.0], kl=0.1)
