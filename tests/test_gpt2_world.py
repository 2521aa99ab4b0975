"""The world experiments with ``--model gpt2``: GPT-2 BPE, the GPT-2 pretraining recipe, a local Hugging Face folder
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
    """The experiments' setup with --model gpt2: BPE probes with y_init, the regime, the model on the plain path on a
    CPU. (A whole run measures every probe over 50257 logits per position: minutes on a CPU, so the runs themselves
    are measured with the bench figures in the README, not here.)"""
    from tinyld.experiments.dpo_dynamics import DPODynamicsConfig, base
    from tinyld.experiments.sft_dynamics import SFTDynamicsConfig, regime, setup

    monkeypatch.chdir(tmp_path)  # the pretrained-model cache goes to ./tinyld_out/cache
    cfg = SFTDynamicsConfig(model="gpt2", seeds=[0], modes=["hard"], pretrain_steps=2, out="sft", threads=1)
    assert cfg.device == "auto"  # gpt2: the GPU when there is one
    cfg.device = "cpu"
    model, tok, probes, world = setup(cfg, 0, "hard")
    assert isinstance(tok, GPT2BPE) and model.config.vocab_size == 50257 and not model.config.fast
    p = probes.split("train")[0]
    assert tok.decode(tok.encode(p.responses["chosen"])) == p.responses["chosen"] and "init" in p.responses
    reg = regime(model, tok, probes, world)
    assert -12 < reg["valley_depth"] < -9  # two steps from init: near uniform over 50257 tokens (−10.8)
    dcfg = DPODynamicsConfig(model="gpt2", seeds=[0], modes=["hard"], pretrain_steps=2, device="cpu", threads=1)
    dmodel, dtok, _ = base(dcfg, 0, "hard")  # the same cached model
    for a, b in zip(model.state_dict().values(), dmodel.state_dict().values()):
        assert torch.equal(a, b)
    assert len(list((tmp_path / "tinyld_out" / "cache").glob("*gpt2*.pt"))) == 1


def test_base_model_flags_are_checked(tmp_path):
    from tinyld.experiments.dpo_dynamics import DPODynamicsConfig
    from tinyld.experiments.sft_dynamics import SFTDynamicsConfig

    assert SFTDynamicsConfig().pretrain_steps == 3000 and SFTDynamicsConfig().device == "cpu"
    assert DPODynamicsConfig(model="gpt2").pretrain_steps == GPT2_RECIPE["steps"]
    with pytest.raises(TinyldError, match="--model 'gpt3' is neither a model name"):
        SFTDynamicsConfig(model="gpt3")
    with pytest.raises(TinyldError, match="--model '/no/such/folder' is neither"):
        DPODynamicsConfig(model="/no/such/folder")
    with pytest.raises(TypeError):  # the old fields are gone: derived from model
        SFTDynamicsConfig(preset="gpt2")
    (tmp_path / "config.json").write_text("{}")  # a Hugging Face folder: the gpt2 world model starts from it
    cfg = DPODynamicsConfig(model=str(tmp_path))
    assert (cfg.preset, cfg.hf, cfg.pretrain_steps) == ("gpt2", str(tmp_path), GPT2_RECIPE["steps"])
    assert SFTDynamicsConfig().preset == "tiny" and SFTDynamicsConfig().hf is None
