"""The squeezing statements of lessons/NOTES.md §3 as property tests, on one softmax with free logits (K = I).

Each test names the statement it checks. The oracle is the softmax itself, recomputed in float64 from the logits
after the step; `who_moves` must agree with it, and the statements must hold on every generated case."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyld.runtime import TinyldError
from tinyld.squeeze import logit_step, squeezed_into, who_moves

CASES = dict(V=st.integers(2, 60), temp=st.floats(0.05, 20.0), eta=st.floats(1e-3, 10.0),
             seed=st.integers(0, 100_000), pick=st.integers(0, 10_000))


def _case(V, temp, seed, pick):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(V, generator=g, dtype=torch.float64) * temp  # temp: how peaked π is
    return z, pick % V


def _probs_after(z, label, eta, sign):
    """Independent of tinyld: the step written out, then softmax. Returned as log-probabilities, which resolve
    the tiny changes of a label that already holds nearly all the mass (1 − π ≈ 1e-9)."""
    pi = torch.softmax(z, -1)
    e = torch.zeros_like(z)
    e[label] = 1.0
    return torch.log_softmax(z, -1), torch.log_softmax(z + sign * eta * (e - pi), -1)


@settings(max_examples=300)
@given(**CASES)
def test_statement_1_a_negative_step_lowers_its_label(V, temp, eta, seed, pick):
    z, y = _case(V, temp, seed, pick)
    pi, after = _probs_after(z, y, eta, -1)
    if pi[y].exp() < 1 - 1e-6:  # nearer 1 the change (~η(1 − π)²) is below float64's resolution
        assert after[y] < pi[y]


@settings(max_examples=300)
@given(**CASES)
def test_statement_2_the_likeliest_other_label_rises(V, temp, eta, seed, pick):
    z, y = _case(V, temp, seed, pick)
    pi, after = _probs_after(z, y, eta, -1)
    top = squeezed_into(z, y)
    assert top != y and pi[top] == max(pi[i] for i in range(V) if i != y)
    if 1e-12 < pi[y].exp() < 1 - 1e-6:  # otherwise nothing moves at float64's resolution
        assert after[top] > pi[top]


@settings(max_examples=300)
@given(**CASES)
def test_statement_3_threshold_rule(V, temp, eta, seed, pick):
    """For i ≠ y⁻: π_i rises exactly when π_i > log(Z)/η′ (cases within 1e-9 of the threshold are skipped)."""
    z, y = _case(V, temp, seed, pick)
    pi, after = _probs_after(z, y, eta, -1)
    m = who_moves(z, y, eta)
    assert torch.allclose(m["pi_after"], after.exp(), rtol=1e-10, atol=1e-15)
    for i in range(V):
        if i == y or abs(pi[i].exp().item() - m["threshold"]) < 1e-9 or abs(after[i] - pi[i]) < 1e-13:
            continue
        assert bool(after[i] > pi[i]) == (pi[i].exp().item() > m["threshold"]), (i, pi[i].item(), m["threshold"])
        assert bool(m["rises"][i]) == bool(after[i] > pi[i])


@settings(max_examples=300)
@given(**CASES)
def test_a_positive_step_never_squeezes(V, temp, eta, seed, pick):
    """A positive step raises its label, and among the other labels the likelier lose the larger share: the
    ratio π′_i/π_i falls as π_i grows, so no mass is squeezed into another label's peak."""
    z, y = _case(V, temp, seed, pick)
    pi, after = _probs_after(z, y, eta, +1)
    if pi[y].exp() < 1 - 1e-6:
        assert after[y] > pi[y]
    others = [i for i in range(V) if i != y]
    log_ratio = {i: (after[i] - pi[i]).item() for i in others}  # log(π′_i/π_i)
    for i in others:
        for j in others:
            if pi[i] > pi[j] + 1e-9:
                assert log_ratio[i] <= log_ratio[j] + 1e-12


@settings(max_examples=200)
@given(**CASES)
def test_statement_4_the_push_on_an_unlikely_label_does_not_fade(V, temp, eta, seed, pick):
    """The negative push on z_{y⁻} is η′(1 − π_{y⁻}): near η′ when y⁻ is unlikely; a positive push fades as π_y → 1."""
    z, y = _case(V, temp, seed, pick)
    pi = torch.softmax(z, -1)
    down = (z - logit_step(z, y, eta, -1))[y].item()
    up = (logit_step(z, y, eta, +1) - z)[y].item()
    assert down == pytest.approx(eta * (1 - pi[y].item()), rel=1e-9, abs=1e-12)  # z is rounded at |z| ~ temp
    assert up == pytest.approx(eta * (1 - pi[y].item()), rel=1e-9, abs=1e-12)


def _share_threshold(z, y, eta):
    """Independent of tinyld: log Z/(η′(1 − π_y)) with Z = Σ_j π_j exp(Δz_j) written out."""
    pi = torch.softmax(z, -1)
    e = torch.zeros_like(z)
    e[y] = 1.0
    log_Z = torch.log1p((pi * torch.expm1(eta * (pi - e))).sum())  # log Z, accurate for small steps
    return (log_Z / (eta * (pi.sum() - pi[y]))).item()


@settings(max_examples=300)
@given(**CASES, drop=st.floats(0.01, 30.0))
def test_statement_5_a_smaller_pi_of_y_minus_raises_the_threshold(V, temp, eta, seed, pick, drop):
    """With the other logits fixed, lowering z_{y⁻} (a smaller π(y⁻)) raises the share threshold
    log Z/(η′(1 − π_{y⁻})), and every label that rises after the step from the lower z_{y⁻} also rises from the
    higher one: the deeper y⁻ sits in a valley, the more labels fall."""
    z, y = _case(V, temp, seed, pick)
    low = z.clone()
    low[y] -= drop  # the same softmax, y⁻ pushed further into the valley
    if torch.softmax(z, -1)[y] > 1 - 1e-6:
        return  # π(y⁻) ≈ 1: log Z ≈ −η′(1 − π(y⁻)) is near float64's resolution
    hi_t, lo_t = _share_threshold(z, y, eta), _share_threshold(low, y, eta)
    assert lo_t >= hi_t - 1e-9 * abs(hi_t) - 1e-15, (lo_t, hi_t)
    assert who_moves(z, y, eta)["share_threshold"] == pytest.approx(hi_t, rel=1e-9, abs=1e-12)
    for zz, t in ((z, hi_t), (low, lo_t)):  # the rule on shares is the threshold rule itself
        pi, after = _probs_after(zz, y, eta, -1)
        share = (pi.exp() / (1 - pi[y].exp())).tolist()
        for i in range(V):
            if i != y and abs(share[i] - t) > 1e-9 and abs(after[i] - pi[i]) > 1e-13:
                assert bool(after[i] > pi[i]) == (share[i] > t)
    rises_hi = who_moves(z, y, eta)["rises"]
    rises_lo = who_moves(low, y, eta)["rises"]
    pi_lo, after_lo = _probs_after(low, y, eta, -1)
    for i in range(V):
        if i != y and bool(rises_lo[i]) and abs(after_lo[i] - pi_lo[i]) > 1e-12:
            assert bool(rises_hi[i]), i


def test_statement_5_is_not_the_plain_threshold():
    """The threshold on π_i itself, log Z/η′, is *not* monotone in π(y⁻): with 99 equally likely other labels and
    η′ = 1 it goes 0.0101 → −0.216 → −0.0101 as π(y⁻) goes 0 → 0.5 → 0.99 (worked by hand with Z written out).
    That is why the statement is about the share π_i/(1 − π(y⁻))."""
    def plain(p, V=100):
        rest = torch.full((V - 1,), (1 - p) / (V - 1), dtype=torch.float64)
        Z = (rest * torch.exp(rest)).sum() + p * math.exp(p - 1)
        return math.log(Z)
    t = [plain(p) for p in (1e-12, 0.5, 0.99)]
    assert t[0] > t[2] > t[1]
    assert t[0] == pytest.approx(1 / 99, rel=1e-6) and t[1] == pytest.approx(-0.2159, abs=1e-3)


def test_a_flipped_inequality_would_fail():
    """The threshold rule is not vacuous: on a case where some labels rise and some fall, flipping the rule is
    wrong for at least one label."""
    z = torch.tensor([3.0, 2.0, 0.0, -1.0, -4.0], dtype=torch.float64)
    m = who_moves(z, 4, 1.0)  # the negative step lands on the least likely label: the valley
    pi, after = m["pi"], m["pi_after"]
    rises = [bool(after[i] > pi[i]) for i in range(4)]
    assert any(rises) and not all(rises)  # squeezing: the top rises, the bottom falls
    assert rises[0] and not rises[3]
    assert all(r == (pi[i].item() > m["threshold"]) for i, r in enumerate(rises))
    assert not all(r == (pi[i].item() < m["threshold"]) for i, r in enumerate(rises))


def test_hand_computed_case():
    """π = softmax(log [0.5, 0.3, 0.2]), negative step on label 2 with η′ = 1, worked by hand."""
    pi = [0.5, 0.3, 0.2]
    z = torch.tensor([math.log(p) for p in pi], dtype=torch.float64)
    dz = [1 * 0.5, 1 * 0.3, 1 * (0.2 - 1)]  # η′(π − e_2)
    Z = sum(p * math.exp(d) for p, d in zip(pi, dz))
    expected = [p * math.exp(d) / Z for p, d in zip(pi, dz)]
    m = who_moves(z, 2, 1.0)
    assert m["pi_after"].tolist() == pytest.approx(expected, rel=1e-12)
    assert m["threshold"] == pytest.approx(math.log(Z), rel=1e-12)
    assert m["rises"].tolist() == [e > p for e, p in zip(expected, pi)] == [True, True, False]


@pytest.mark.parametrize("args, match", [
    ((torch.zeros(1), 0, 1.0), "V ≥ 2"),
    ((torch.zeros(2, 3), 0, 1.0), "1-D"),
    ((torch.tensor([0.0, float("nan")]), 0, 1.0), "NaN"),
    ((torch.zeros(3), 3, 1.0), r"label must be an integer in \[0, 3\)"),
    ((torch.zeros(3), 0, 0.0), "eta"),
    ((torch.zeros(3, dtype=torch.long), 0, 1.0), "float"),
])
def test_bad_input(args, match):
    with pytest.raises(TinyldError, match=match):
        who_moves(*args)
    with pytest.raises(TinyldError, match="sign"):
        logit_step(torch.zeros(3), 0, 1.0, sign=0)
    assert F.softmax(torch.zeros(2), -1).sum() == 1  # the module itself imports cleanly
