"""The world experiments with ``--preset gpt2``: GPT-2 BPE, the GPT-2 pretraining recipe, a local Hugging Face folder
as the starting point, and the fast-path switches. GPT-2 small costs seconds per step on a CPU, so these tests shrink
the ``gpt2`` preset's shape (a monkeypatch) and keep everything else: the BPE, its 50257-token vocabulary, the recipe
and the code paths. The full 124M model is exercised in test_dynamics.py and measured by ``python -m tinyld bench``."""
import pytest
import torch

from tinyld import model as model_mod
from tinyld.model import GPT, GPTConfig
from tinyld.pretrained import GPT2_RECIPE, pretrained
from tinyld.runtime import TinyldError
from tinyld.tokenizers import GPT2BPE

SMALL = dict(n_layer=1, n_head=2, n_embd=16, block_size=128, vocab_size=50257)


@pytest.fixture
def small_gpt2(monkeypatch):
    monkeypatch.setitem(model_mod.PRESETS, "gpt2", SMALL)


def test_pretrained_gpt2_uses_bpe_recipe_and_cache(small_gpt2, tmp_path):
    world, tok, m = pretrained(0, steps=3, cache=tmp_path, preset="gpt2")
    assert isinstance(tok, GPT2BPE) and m.config.vocab_size == 50257 and m.config.n_embd == 16
    assert not m.config.fast and next(m.parameters()).device.type == "cpu"
    (ck,) = list(tmp_path.glob("*.pt"))
    assert "gpt2-random-3-cpu" in ck.name
    _, _, again = pretrained(0, steps=3, cache=tmp_path, preset="gpt2")  # from the cache: the same weights
    for a, b in zip(m.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    # the recipe trained it: three AdamW steps at lr ≤ 3e-4 moved every weight matrix, and not far
    torch.manual_seed(0)
    init = GPT(GPTConfig.preset("gpt2"))
    moved = [(m.state_dict()[k] - v).abs().max().item() for k, v in init.state_dict().items() if v.dim() == 2]
    assert all(0 < d < 3 * 3 * GPT2_RECIPE["lr"] for d in moved), moved
    with pytest.raises(TinyldError, match="world's text only"):
        pretrained(0, steps=3, cache=None, preset="gpt2", task="arithmetic")
    with pytest.raises(TinyldError, match="not a folder"):
        pretrained(0, steps=3, cache=None, hf=tmp_path / "missing")


def test_pretrained_from_hf_folder_starts_from_its_weights(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=50257, n_positions=128, n_embd=16, n_layer=2, n_head=2)
    torch.manual_seed(1)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "hf")
    start = GPT.from_hf(tmp_path / "hf")
    _, _, m = pretrained(0, steps=1, cache=tmp_path / "cache", hf=tmp_path / "hf")
    assert m.config.n_layer == 2 and m.config.block_size == 128  # the folder's shape, not the preset's
    (ck,) = list((tmp_path / "cache").glob("*.pt"))
    assert "-hf" in ck.name
    # one AdamW step at the first warm-up lr (3e-4 / 50) from the folder's weights: every weight moved by about it
    lr0 = GPT2_RECIPE["lr"] / GPT2_RECIPE["warmup_steps"]
    d = max((m.state_dict()[k] - v).abs().max().item() for k, v in start.state_dict().items())
    assert 0.5 * lr0 < d < 2 * lr0, d
    with pytest.raises(TinyldError, match="not 'tiny'"):
        pretrained(0, steps=1, cache=None, hf=tmp_path / "hf", preset="tiny")
    cfg.n_positions = 64  # too short for the world's prompts: refused before any pretraining
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "short")
    with pytest.raises(TinyldError, match="context of 64 tokens"):
        pretrained(0, steps=1000, cache=None, hf=tmp_path / "short")
    with pytest.raises(TinyldError, match="cache must be a folder path"):
        pretrained(0, steps=1, cache=123)


def test_experiments_build_their_gpt2_base_models(small_gpt2, tmp_path, monkeypatch):
    """The experiments' setup with --preset gpt2: BPE probes with y_init, the regime, the model on the plain path on a
    CPU. (A whole run measures every probe over 50257 logits per position: minutes on a CPU, so the runs themselves
    are measured with the bench figures in the README, not here.)"""
    from tinyld.experiments.dpo_dynamics import DPODynamicsConfig, base
    from tinyld.experiments.sft_dynamics import SFTDynamicsConfig, regime, setup

    monkeypatch.chdir(tmp_path)  # the pretrained-model cache goes to ./tinyld_out/cache
    cfg = SFTDynamicsConfig(preset="gpt2", seeds=[0], modes=["hard"], pretrain_steps=2, out="sft", threads=1)
    assert cfg.device == "auto"  # gpt2: the GPU when there is one
    cfg.device = "cpu"
    model, tok, probes, world = setup(cfg, 0, "hard")
    assert isinstance(tok, GPT2BPE) and model.config.vocab_size == 50257 and not model.config.fast
    p = probes.split("train")[0]
    assert tok.decode(tok.encode(p.responses["chosen"])) == p.responses["chosen"] and "init" in p.responses
    reg = regime(model, tok, probes, world)
    assert -12 < reg["valley_depth"] < -9  # two steps from init: near uniform over 50257 tokens (−10.8)
    dcfg = DPODynamicsConfig(preset="gpt2", seeds=[0], modes=["hard"], pretrain_steps=2, device="cpu", threads=1)
    dmodel, dtok, _ = base(dcfg, 0, "hard")  # the same cached model
    for a, b in zip(model.state_dict().values(), dmodel.state_dict().values()):
        assert torch.equal(a, b)
    assert len(list((tmp_path / "tinyld_out" / "cache").glob("*gpt2*.pt"))) == 1


def test_base_model_flags_are_checked():
    from tinyld.experiments.dpo_dynamics import DPODynamicsConfig
    from tinyld.experiments.sft_dynamics import SFTDynamicsConfig

    assert SFTDynamicsConfig().pretrain_steps == 3000 and SFTDynamicsConfig().device == "cpu"
    assert DPODynamicsConfig(preset="gpt2").pretrain_steps == GPT2_RECIPE["steps"]
    with pytest.raises(TinyldError, match="--preset: unknown preset 'gpt3'"):
        SFTDynamicsConfig(preset="gpt3")
    with pytest.raises(TinyldError, match="--hf .* is not a folder"):
        DPODynamicsConfig(hf="/no/such/folder")
    with pytest.raises(TinyldError, match="--probes take their model from --model"):
        SFTDynamicsConfig(preset="gpt2", probes="p.jsonl", model="gpt2")
    with pytest.raises(TinyldError, match="goes with --preset gpt2"):
        SFTDynamicsConfig(preset="tiny", hf=".")
    assert SFTDynamicsConfig().preset == "tiny" and DPODynamicsConfig(hf=".").preset == "gpt2"


def test_use_fast_switches_attention_in_place():
    torch.manual_seed(0)
    m = GPT(GPTConfig.preset("tiny", vocab_size=20)).double().eval()
    x = torch.randint(0, 20, (2, 9))
    plain = m(x)
    assert m.use_fast(True) is m and m.config.fast and all(b.attn.fast for b in m.h)
    torch.testing.assert_close(m(x), plain, rtol=1e-12, atol=1e-12)  # the same function, fused kernel
    assert not m.use_fast(False).h[0].attn.fast
    with pytest.raises(TinyldError):
        m.use_fast("yes")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fast_path_on_gpu_matches_plain_path():
    """Fused attention + bf16 autocast + torch.compile take the same step as the plain float32 path, to bf16
    precision: the losses agree within 2 %, and one SGD update (η·g, so the gradients themselves) within 5 % in norm.
    (bf16 operands carry relative errors of 1e-3 to 1e-2; AdamW's first step, ±η per weight, would flip sign on
    weights whose gradient is near zero, so it is no test of the gradient.)"""
    from tinyld.data import Batch
    from tinyld.train import TrainConfig, Trainer

    class Fixed:
        def __init__(self, b):
            self.b, self.batch_size = b, b.idx.shape[0]

        def batch(self, step):
            return self.b

    torch.manual_seed(0)
    x = torch.randint(0, 300, (4, 65))
    b = Batch(x[:, :-1], x[:, 1:])
    out = {}
    for fast in (False, True):
        torch.manual_seed(0)
        m = GPT(GPTConfig.preset("mini", vocab_size=300, fast=fast)).cuda()
        start = torch.nn.utils.parameters_to_vector(m.parameters()).detach().clone()
        tc = TrainConfig(task="pretrain", optimizer="sgd", lr=1.0, grad_clip=0.0, progress=False)
        tr = Trainer(m, Fixed(b), tc, compile=fast)
        assert tr.fast == fast and (tr.net is not m) == fast  # compiled only on the fast path
        loss = tr.train_step()["loss"]
        out[fast] = (loss, torch.nn.utils.parameters_to_vector(m.parameters()).detach() - start)
    assert out[True][0] == pytest.approx(out[False][0], rel=0.02)
    d_plain, d_fast = out[False][1], out[True][1]
    assert d_plain.norm() > 0 and (d_fast - d_plain).norm() / d_plain.norm() < 0.05
