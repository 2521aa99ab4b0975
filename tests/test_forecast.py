"""Pre-memorization accuracy and CHES (tinyld.forecast) against hand-made arrays, closed forms and a direct
computation of hidden states with a forward hook on the final layer norm."""
import math

import pytest
import torch

from tinyld import GPT, GPTConfig, TinyldError
from tinyld.data import make_batch
from tinyld.forecast import (ches, ches_from_hidden, memorization_threshold, memorized, pre_memorization_accuracy,
                             solution_perplexity)
from tinyld.world import World


def test_memorization_threshold_closed_form():
    assert memorization_threshold(-2.3) == pytest.approx(math.exp(math.exp(-2.3)))
    assert memorization_threshold(-2.3) == pytest.approx(1.1055, abs=1e-4)  # the published GSM8k value ≈ 1.105
    assert memorization_threshold(-1.7) == pytest.approx(1.2004, abs=1e-4)  # MATH ≈ 1.20
    assert memorized(torch.tensor([1.0, 1.10, 1.11, 3.0])).tolist() == [True, True, False, False]
    with pytest.raises(TinyldError, match="≥ 1"):
        memorized(torch.tensor([0.5]))


def test_pre_memorization_recurrence_by_hand():
    # 4 checkpoints × 3 examples
    acc = torch.tensor([[0.2, 0.0, 1.0],
                        [0.6, 0.4, 1.0],
                        [1.0, 0.8, 0.6],
                        [1.0, 1.0, 1.0]])
    mem = torch.tensor([[False, True, True],
                        [False, True, True],
                        [True, False, True],
                        [True, False, True]])
    # example 0: running max of acc·[not mem] = 0.2, 0.6, 0.6, 0.6; min with acc_t → 0.2, 0.6, 0.6, 0.6
    # example 1: memorized first, then not: 0, 0, 0.8, 1.0; min with acc → 0, 0, 0.8, 1.0
    # example 2: memorized from the start: 0 throughout
    want = torch.tensor([[0.2, 0.0, 0.0], [0.6, 0.0, 0.0], [0.6, 0.8, 0.0], [0.6, 1.0, 0.0]], dtype=torch.float64)
    pm = pre_memorization_accuracy(acc, mem)
    assert torch.allclose(pm, want, rtol=0, atol=1e-7)  # acc was given in float32
    assert pm.mean(1).tolist() == pytest.approx([0.2 / 3, 0.2, 1.4 / 3, 1.6 / 3])
    # the min: a later drop in accuracy lowers PM even below the best earlier value
    late = pre_memorization_accuracy(torch.tensor([[0.9], [0.3]], dtype=torch.float64),
                                     torch.tensor([[False], [False]]))
    assert late.tolist() == [[0.9], [0.3]]
    with pytest.raises(TinyldError, match="bool"):
        pre_memorization_accuracy(acc, mem.int())
    with pytest.raises(TinyldError, match=r"\[0, 1\]"):
        pre_memorization_accuracy(acc * 2, mem)


@pytest.fixture(scope="module")
def small():
    w = World(0)
    tok = w.tokenizer()
    torch.manual_seed(0)
    return w, tok, GPT(GPTConfig.preset("tiny", vocab_size=tok.vocab_size)).double().eval()


def test_solution_perplexity_is_exp_of_the_mean_nll(small):
    w, tok, model = small
    items = w.train_items()[:3]
    ppl = solution_perplexity(model, tok, [i.prompt for i in items], [i.chosen for i in items])
    for k, it in enumerate(items):
        b = make_batch(tok, [it.prompt], [it.chosen])
        logp = torch.log_softmax(model(b.idx), -1)[0]
        ys = b.targets[0][b.mask[0]]
        nll = -logp[b.mask[0]].gather(-1, ys[:, None]).mean().item()
        assert ppl[k].item() == pytest.approx(math.exp(nll), rel=1e-9)


@pytest.mark.parametrize("normalize", [False, True])
def test_ches_against_hidden_states_read_with_a_hook(small, normalize):
    w, tok, model = small
    items = w.train_items()[:3]
    got = ches(model, tok, [i.prompt for i in items], [i.chosen for i in items], [i.rejected for i in items],
               normalize)
    seen = {}
    handle = model.ln_f.register_forward_hook(lambda m, i, o: seen.__setitem__("h", o.detach()))
    try:
        for k, it in enumerate(items):
            H = []
            for y in (it.chosen, it.rejected):
                b = make_batch(tok, [it.prompt], [y])
                model(b.idx)
                rows = seen["h"][0][b.mask[0]]  # the positions that predict y's tokens
                H.append(rows.mean(0) if normalize else rows.sum(0))
            want = (H[0] @ H[1] - H[0] @ H[0]).item()
            assert got[k].item() == pytest.approx(want, rel=1e-9, abs=1e-9)
    finally:
        handle.remove()


def test_ches_from_hidden_closed_form_and_checks():
    hp = torch.tensor([[1.0, 0.0], [1.0, 2.0]])  # H⁺ = (2, 2)
    hm = torch.tensor([[0.0, 1.0]])  # H⁻ = (0, 1)
    assert ches_from_hidden(hp, hm).item() == pytest.approx(2.0 - 8.0)
    assert ches_from_hidden(hp, hm, normalize=True).item() == pytest.approx((1 * 0 + 1 * 1) - 2.0)  # (1,1)·(0,1) − 2
    assert ches_from_hidden(hp, hp).item() == 0.0  # identical responses: ⟨H, H⟩ − ‖H‖² = 0
    with pytest.raises(TinyldError, match="positions, C"):
        ches_from_hidden(hp, torch.zeros(1, 3))
