"""The modern decoder's parts against independent oracles: torch's own RMSNorm, RoPE as complex rotations,
grouped-query attention as multi-head attention with repeated keys and values, and the KV cache against the
uncached forward and generation."""
import pytest
import torch

from tinyld import GPT, GPTConfig, TinyldError
from tinyld.blocks import KVCache, RMSNorm, causal_mask, rotary

LLAMA = dict(norm="rms", pos="rope", mlp="swiglu", n_kv_head=2, n_inner=96, bias=False)


def test_rmsnorm_equals_torchs():
    torch.manual_seed(0)
    norm = RMSNorm(8, 1e-5).double()
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    want = torch.nn.functional.rms_norm(x, (8,), norm.weight, eps=1e-5)
    torch.testing.assert_close(norm(x), want, rtol=0, atol=1e-14)


def test_rotary_is_a_complex_rotation_by_position_times_theta():
    """Pair dim i with i + D/2 as the complex number x_i + j·x_{i+D/2}: RoPE multiplies it by exp(j·p·θ_i)."""
    torch.manual_seed(0)
    B, H, T, D, base, start = 2, 3, 5, 8, 100.0, 7
    x = torch.randn(B, H, T, D, dtype=torch.float64)
    z = torch.complex(x[..., : D // 2], x[..., D // 2:])  # (B, H, T, D/2)
    theta = torch.tensor([base ** (-2 * i / D) for i in range(D // 2)], dtype=torch.float64)
    p = torch.arange(start, start + T, dtype=torch.float64)
    turned = z * torch.exp(1j * p[:, None] * theta[None, :])
    want = torch.cat([turned.real, turned.imag], dim=-1)
    torch.testing.assert_close(rotary(x, start, base), want, rtol=0, atol=1e-12)


def test_rotary_scores_depend_only_on_the_distance():
    torch.manual_seed(1)
    q, k = torch.randn(1, 1, 1, 16, dtype=torch.float64), torch.randn(1, 1, 1, 16, dtype=torch.float64)
    score = lambda m, n: (rotary(q, m, 1e4) * rotary(k, n, 1e4)).sum().item()  # noqa: E731
    assert score(3, 1) == pytest.approx(score(12, 10), abs=1e-12) == pytest.approx(score(102, 100), abs=1e-12)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-6)


def test_causal_mask_lets_the_newest_queries_see_every_earlier_key():
    m = causal_mask(2, 5, "cpu")
    assert m.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    assert torch.equal(causal_mask(4, 4, "cpu"), torch.ones(4, 4, dtype=torch.bool).tril())


def test_grouped_query_attention_is_attention_with_repeated_keys_and_values():
    torch.manual_seed(0)
    gqa = GPT(GPTConfig.preset("tiny", vocab_size=40, **LLAMA)).double().eval()
    mha = GPT(GPTConfig.preset("tiny", vocab_size=40, **{**LLAMA, "n_kv_head": 4})).double().eval()
    state = gqa.state_dict()
    C, D = 64, 16
    for i in range(2):
        w = state[f"h.{i}.attn.c_attn.weight"]  # rows: q (C), k (2·D), v (2·D)
        q, k, v = w.split([C, 2 * D, 2 * D])
        rep = lambda t: t.view(2, D, C).repeat_interleave(2, dim=0).reshape(4 * D, C)  # noqa: E731
        state[f"h.{i}.attn.c_attn.weight"] = torch.cat([q, rep(k), rep(v)])
    mha.load_state_dict(state)
    x = torch.randint(0, 40, (2, 9))
    torch.testing.assert_close(gqa(x), mha(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [{}, LLAMA], ids=["gpt2", "llama"])
def test_a_cached_forward_in_pieces_equals_the_whole_forward(shape):
    torch.manual_seed(0)
    m = GPT(GPTConfig.preset("tiny", vocab_size=40, **shape)).double().eval()
    x = torch.randint(0, 40, (2, 11))
    cache = KVCache(m.config.n_layer)
    pieces = [m(x[:, :6], cache), m(x[:, 6:7], cache), m(x[:, 7:], cache)]
    assert cache.length == 11
    torch.testing.assert_close(torch.cat(pieces, dim=1), m(x), rtol=0, atol=1e-12)
    with pytest.raises(TinyldError, match="T=65 exceeds the model's block_size=64"):
        m(torch.zeros(1, 54, dtype=torch.long), cache)  # 11 cached + 54 new


@pytest.mark.parametrize("shape", [{}, LLAMA], ids=["gpt2", "llama"])
def test_generation_with_the_cache_equals_generation_without(shape):
    torch.manual_seed(0)
    m = GPT(GPTConfig.preset("tiny", vocab_size=40, block_size=16, **shape)).double().eval()
    x = torch.randint(0, 40, (3, 5))
    # 20 new tokens run past block_size 16: the cache is dropped there for the window of the last 16 tokens
    assert torch.equal(m.generate(x, 20), m.generate(x, 20, use_cache=False))
    sample = lambda cache: m.generate(x, 9, temperature=1.0, top_k=10, use_cache=cache,  # noqa: E731
                                      generator=torch.Generator().manual_seed(3))
    assert torch.equal(sample(True), sample(False))
    with pytest.raises(TinyldError, match="use_cache must be True or False"):
        m.generate(x, 2, use_cache="yes")


def test_a_modern_decoder_survives_a_checkpoint(wtok, tmp_path):
    from tinyld.checkpoints import load_model, save_checkpoint
    torch.manual_seed(0)
    m = GPT(GPTConfig.preset("tiny", vocab_size=wtok.vocab_size, **LLAMA)).double().eval()
    back, tok, _ = load_model(save_checkpoint(tmp_path / "m.pt", m, wtok))
    x = torch.randint(0, wtok.vocab_size, (2, 7))
    assert back.config == m.config and tok.identity() == wtok.identity()
    torch.testing.assert_close(back.double()(x), m(x), rtol=0, atol=0)


def test_a_cache_that_does_not_fit_is_refused():
    torch.manual_seed(0)
    m = GPT(GPTConfig.preset("tiny", vocab_size=40, **LLAMA)).eval()
    x = torch.randint(0, 40, (2, 5))
    with pytest.raises(TinyldError, match=r"cache must be a KVCache\(2\)"):
        m(x, {})
    with pytest.raises(TinyldError, match=r"cache must be a KVCache\(2\)"):
        m(x, KVCache(1))
    cache = KVCache(2)
    m(x, cache)
    with pytest.raises(TinyldError, match="the cache holds 2 sequences but idx has 1"):
        m(x[:1], cache)
    with pytest.raises(TinyldError, match="empty sequence"):
        m(x[:, :0], cache)


def test_the_gated_mlp_applies_the_configs_dropout():
    torch.manual_seed(0)
    m = GPT(GPTConfig.preset("tiny", vocab_size=40, dropout=0.5, **LLAMA)).train()
    x = torch.randn(2, 5, 64)
    assert not torch.equal(m.h[0].mlp(x), m.h[0].mlp(x))  # two dropout masks
    assert torch.equal(m.eval().h[0].mlp(x), m.h[0].mlp(x))
