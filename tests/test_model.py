import pytest
import torch
from torch.func import functional_call, jvp

from tinyld import GPT, GPTConfig, TinyldError
from tinyld.data import make_batch
from tinyld.losses import sft_loss

# The two decoders the GPT can be: GPT-2's and a modern one (Llama, SmolLM2) at the tiny preset's size.
LLAMA = dict(norm="rms", pos="rope", mlp="swiglu", n_kv_head=2, n_inner=96, bias=False)
SHAPES = {"gpt2": {}, "llama": LLAMA}


def test_gpt2_preset_has_gpt2_small_parameter_count():
    m = GPT(GPTConfig.preset("gpt2"))
    assert m.num_params() == 124_439_808  # GPT-2 small with the tied head (published figure)


def test_presets_sizes():
    assert GPT(GPTConfig.preset("tiny", vocab_size=128)).num_params() < 1_000_000
    assert GPT(GPTConfig.preset("mini", vocab_size=128)).num_params() < 2_000_000


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fast", [False, True])
def test_causality_later_tokens_never_change_earlier_logits(fast, shape):
    torch.manual_seed(0)
    m = GPT(GPTConfig.preset("tiny", vocab_size=50, fast=fast, **SHAPES[shape])).double().eval()
    x = torch.randint(0, 50, (2, 16))
    base = m(x)
    for t in range(15):
        y = x.clone()
        y[:, t + 1:] = torch.randint(0, 50, y[:, t + 1:].shape)
        out = m(y)
        assert torch.equal(out[:, : t + 1], base[:, : t + 1]), f"logits ≤ {t} changed"
        assert not torch.allclose(out[:, t + 1:], base[:, t + 1:])  # and the later ones do change


@pytest.mark.parametrize("shape", SHAPES)
def test_fast_attention_matches_explicit(shape):
    torch.manual_seed(0)
    m = GPT(GPTConfig.preset("tiny", vocab_size=50, **SHAPES[shape])).double().eval()
    f = GPT(GPTConfig.preset("tiny", vocab_size=50, fast=True, **SHAPES[shape])).double().eval()
    f.load_state_dict(m.state_dict())
    x = torch.randint(0, 50, (3, 20))
    torch.testing.assert_close(f(x), m(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
def test_masked_positions_get_exactly_zero_gradient(wtok, shape):
    torch.manual_seed(0)
    m = GPT(GPTConfig.preset("tiny", vocab_size=wtok.vocab_size, **SHAPES[shape])).double()
    batch = make_batch(wtok, ["question : where does alice live ? answer :", "question : where"],
                       ["alice lives in paris .", "zoe likes rice . zoe has a cat ."])
    logits = m(batch.idx).detach().requires_grad_(True)  # (B, T, V)
    sft_loss(logits, batch.targets).backward()
    g = logits.grad  # (B, T, V)
    masked = ~batch.mask
    assert masked.any() and batch.mask.any()
    assert torch.count_nonzero(g[masked]) == 0  # prompt and padding: exactly zero
    assert (g[batch.mask].abs().sum(-1) > 0).all()  # every response position gets a gradient


def _fd_check(m, x, eps, tol):
    params = {k: v.detach() for k, v in m.named_parameters()}
    g = torch.Generator().manual_seed(1)
    tangent = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}
    norm = torch.sqrt(sum((t ** 2).sum() for t in tangent.values()))
    tangent = {k: t / norm for k, t in tangent.items()}  # a unit direction in parameter space

    def f(p):
        return functional_call(m, p, (x,))

    _, dz = jvp(f, (params,), (tangent,))  # (B, T, V) forward-mode
    plus = f({k: params[k] + eps * tangent[k] for k in params})
    minus = f({k: params[k] - eps * tangent[k] for k in params})
    fd = (plus - minus) / (2 * eps)  # (B, T, V) central difference, error O(eps²)
    err = (dz - fd).abs().max() / dz.abs().max()
    assert err < tol, f"relative JVP vs finite-difference error {err:.2e}"


def test_jvp_matches_central_finite_difference_tiny(tiny64):
    x = torch.randint(0, tiny64.config.vocab_size, (2, 12))
    _fd_check(tiny64, x, eps=1e-5, tol=1e-7)


def test_jvp_matches_central_finite_difference_modern_decoder():
    torch.manual_seed(0)
    m = GPT(GPTConfig.preset("tiny", vocab_size=50, **LLAMA)).double().eval()
    _fd_check(m, torch.randint(0, 50, (2, 12)), eps=1e-5, tol=1e-7)


@pytest.mark.slow
def test_jvp_matches_central_finite_difference_gpt2(gpt2_64):
    x = torch.randint(0, 50257, (1, 6))
    _fd_check(gpt2_64, x, eps=1e-5, tol=1e-6)


@pytest.mark.parametrize("kw, msg", [
    (dict(n_embd=65), "not divisible by n_head"),
    (dict(n_kv_head=3), "n_head=4 is not a multiple of n_kv_head=3"),
    (dict(norm="batch"), "unknown norm 'batch'; choose one of layer, rms"),
    (dict(pos="rope", n_embd=68), "head width 17 is odd"),
    (dict(mlp="relu"), "unknown mlp 'relu'"),
    (dict(n_inner=0), "n_inner"),
    (dict(n_layer=0), "n_layer must be a positive integer"),
    (dict(dropout=1.5), "dropout"),
])
def test_bad_config_values(kw, msg):
    with pytest.raises(TinyldError, match=msg):
        GPTConfig.preset("tiny", **kw)


def test_unknown_preset_and_field():
    with pytest.raises(TinyldError, match="unknown preset 'huge'.*tiny, mini, gpt2"):
        GPTConfig.preset("huge")
    with pytest.raises(TinyldError, match=r"unknown GPTConfig field\(s\) \['n_layers'\]"):
        GPTConfig.preset("tiny", n_layers=3)


def test_bad_inputs_give_clear_errors():
    m = GPT(GPTConfig.preset("tiny", vocab_size=50))
    with pytest.raises(TinyldError, match="T=65 exceeds the model's block_size=64"):
        m(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(TinyldError, match=r"token id 50 is outside the vocabulary \[0, 50\)"):
        m(torch.tensor([[1, 2, 50]]))
    with pytest.raises(TinyldError, match=r"shape \(B, T\).*idx\[None\]"):
        m(torch.tensor([1, 2, 3]))
    with pytest.raises(TinyldError, match="must be integers"):
        m(torch.zeros(1, 3))


def test_generate_greedy_and_eos():
    torch.manual_seed(0)
    m = GPT(GPTConfig.preset("tiny", vocab_size=20)).eval()
    x = torch.randint(0, 20, (2, 4))
    out = m.generate(x, 6)
    assert out.shape == (2, 10) and torch.equal(out[:, :4], x)
    # greedy = argmax of the model's own next-token logits, step by step
    for t in range(4, 10):
        assert torch.equal(out[:, t], m(out[:, :t])[:, -1].argmax(-1))
    eos = int(out[0, 4])
    stopped = m.generate(x[:1], 6, eos_id=eos)
    assert stopped.shape[1] == 5 and stopped[0, -1] == eos
