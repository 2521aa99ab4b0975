"""tinyld's GPT vs the Hugging Face GPT-2 implementation (the oracle), through a local folder."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from tinyld import GPT, TinyldError  # noqa: E402


def _hf_model(seed=0):
    cfg = transformers.GPT2Config(vocab_size=97, n_positions=40, n_embd=48, n_layer=3, n_head=4,
                                  initializer_range=0.2, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(cfg).eval()


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "pytorch_model.bin"])
def test_import_matches_hf_logits_and_greedy(tmp_path, safe):
    hf = _hf_model()
    if safe:
        hf.save_pretrained(tmp_path)
    else:  # the older format (recent transformers no longer writes it): config.json + a torch state dict
        hf.config.save_pretrained(tmp_path)
        torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    assert (tmp_path / ("model.safetensors" if safe else "pytorch_model.bin")).is_file()
    m = GPT.from_hf(tmp_path).eval()
    x = torch.randint(0, 97, (3, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (hf(x).logits - m(x)).abs().max().item()
    assert diff <= 1e-5, diff
    prompt = x[:, :5]
    ref = hf.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0, eos_token_id=None)
    ours = m.generate(prompt, 20)
    assert len(set(ours[0, 5:].tolist())) > 3  # a non-degenerate continuation, so the comparison means something
    assert torch.equal(ref, ours)


def test_import_errors(tmp_path):
    with pytest.raises(TinyldError, match="no config.json"):
        GPT.from_hf(tmp_path)
    hf = _hf_model()
    hf.save_pretrained(tmp_path)
    w = tmp_path / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])  # truncated download
    with pytest.raises(TinyldError, match="corrupt or truncated"):
        GPT.from_hf(tmp_path)
    w.unlink()
    with pytest.raises(TinyldError, match="no model.safetensors or pytorch_model.bin"):
        GPT.from_hf(tmp_path)
