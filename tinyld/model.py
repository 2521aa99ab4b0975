"""A GPT-2 you can read in one sitting.

Notable choices
- By default exactly GPT-2's architecture (pre-LayerNorm blocks, GELU-tanh MLP, learned positions, tied head), with
  the Hugging Face parameter names, so a local GPT-2 folder imports with one rename and four transposes. The two
  Hugging Face options that change the outputs of a GPT-2, unscaled attention and an untied head, are config
  fields; the options it cannot reproduce are refused.
- Four config fields turn it into a modern decoder (Llama, SmolLM2; the parts are in :mod:`tinyld.blocks`):
  ``norm="rms"``, ``pos="rope"``, ``mlp="swiglu"`` and ``n_kv_head`` < ``n_head`` (grouped-query attention), with
  ``bias=False``. The preset ``smollm2`` is SmolLM2-135M's shape; :mod:`tinyld.gguf` loads its weights.
- Attention is written out as a masked softmax by default. Every op then has forward- and reverse-mode AD, so
  ``torch.func.jvp``, ``jacrev`` and ``vmap`` run through the whole model in float64 — the dynamics engine needs
  that. ``GPTConfig.fast = True`` switches to fused ``scaled_dot_product_attention`` and lets the trainer use
  bf16 autocast on a GPU (no forward-mode AD on that path; the engine falls back to the math kernel).
- Dropout is 0 by default: the learning-dynamics decomposition assumes a deterministic forward.
- ``forward`` returns logits only; losses live in :mod:`tinyld.losses`.

Dims: B batch, T sequence length, V vocabulary, C width (n_embd), H heads, D = C / H head width, H_kv key/value
heads, S = keys a query may look at (T, or the cached tokens plus T when generating).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from tinyld.blocks import KVCache, RMSNorm, SwiGLU, causal_mask, rotary
from tinyld.runtime import TinyldError, check_choice, check_int, check_number, first_nonfinite, from_dict_strict


@dataclass
class GPTConfig:
    vocab_size: int = 256  # V: rows of the embedding and the (tied) output head
    block_size: int = 64  # longest sequence the model accepts (learned positions)
    n_layer: int = 2  # transformer blocks
    n_head: int = 4  # attention heads per block (n_embd must divide by it)
    n_embd: int = 64  # C: residual-stream width
    dropout: float = 0.0  # off by default: the dynamics decomposition assumes a deterministic forward
    bias: bool = True  # biases in Linear and LayerNorm, as in GPT-2
    layer_norm_eps: float = 1e-5  # GPT-2's epsilon
    scale_attn: bool = True  # divide attention scores by sqrt(D), as GPT-2 does (HF: scale_attn_weights)
    tie_head: bool = True  # the output head is the token embedding matrix (HF: tie_word_embeddings)
    fast: bool = False  # the one fast switch: fused SDPA attention + bf16 autocast when training on a GPU
    norm: str = "layer"  # "layer" (GPT-2's LayerNorm) or "rms" (RMSNorm, Llama)
    pos: str = "learned"  # "learned" (a position table, GPT-2) or "rope" (rotary embeddings, Llama)
    rope_base: float = 10000.0  # RoPE's base: θ_i = base^(−2i/D)
    mlp: str = "gelu"  # "gelu" (GPT-2) or "swiglu" (gated, Llama)
    n_inner: int | None = None  # the MLP's hidden width; None: 4·n_embd
    n_kv_head: int | None = None  # key/value heads (grouped-query attention); None: n_head

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise TinyldError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise TinyldError(
                f"GPTConfig: n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                f"pick n_head from {[h for h in range(1, self.n_embd + 1) if self.n_embd % h == 0][:8]}…")
        check_number("GPTConfig.dropout", self.dropout, 0, 1, hi_open=True)
        check_number("GPTConfig.layer_norm_eps", self.layer_norm_eps, 0, strict=True)
        for name in ("bias", "scale_attn", "tie_head", "fast"):
            if not isinstance(getattr(self, name), bool):
                raise TinyldError(f"GPTConfig.{name} must be True or False, got {getattr(self, name)!r}")
        for name, choices in (("norm", ("layer", "rms")), ("pos", ("learned", "rope")), ("mlp", ("gelu", "swiglu"))):
            check_choice(f"GPTConfig.{name}", getattr(self, name), choices)
        check_number("GPTConfig.rope_base", self.rope_base, 1, strict=True)
        if self.n_inner is not None:
            check_int("GPTConfig.n_inner", self.n_inner, 1)
        if self.n_kv_head is not None:
            check_int("GPTConfig.n_kv_head", self.n_kv_head, 1)
            if self.n_head % self.n_kv_head:
                raise TinyldError(f"GPTConfig: n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}: "
                                  "each key/value head serves the same number of query heads")
        if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
            raise TinyldError(f"GPTConfig: rotary embeddings turn pairs of dims, but the head width "
                              f"{self.n_embd // self.n_head} is odd")

    @classmethod
    def preset(cls, name: str, **overrides) -> "GPTConfig":
        """A named shape (see ``PRESETS``) with any field overridden, e.g. ``preset("tiny", vocab_size=200)``."""
        if not isinstance(name, str) or name not in PRESETS:
            raise TinyldError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        """Build from a dict (a checkpoint, a JSON file); an unknown key is an error, not silently dropped."""
        return from_dict_strict(cls, d)

    def to_dict(self) -> dict:
        return asdict(self)


# Shapes only; a tokenizer usually sets vocab_size. Parameter counts are in the README (python -m tinyld env).
PRESETS: dict[str, dict] = {
    "tiny": dict(n_layer=2, n_head=4, n_embd=64, block_size=64),  # ~0.1M + V·64: a step in milliseconds
    "mini": dict(n_layer=4, n_head=4, n_embd=128, block_size=128),  # ~0.8M + V·128: the "mid" size
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257),  # GPT-2 small, 124M
    "smollm2": dict(n_layer=30, n_head=9, n_kv_head=3, n_embd=576, n_inner=1536, block_size=8192, vocab_size=49152,
                    norm="rms", pos="rope", rope_base=100000.0, mlp="swiglu", bias=False),  # SmolLM2-135M, 135M
}


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.fast, self.dropout, self.scale_attn = cfg.n_head, cfg.fast, cfg.dropout, cfg.scale_attn
        self.n_kv_head = cfg.n_kv_head or cfg.n_head
        self.rope_base = cfg.rope_base if cfg.pos == "rope" else None
        D = cfg.n_embd // cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, (cfg.n_head + 2 * self.n_kv_head) * D, bias=cfg.bias)  # q, k, v at once
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.attn_drop = nn.Dropout(cfg.dropout)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        H, Hkv, D = self.n_head, self.n_kv_head, C // self.n_head
        q, k, v = self.c_attn(x).split([H * D, Hkv * D, Hkv * D], dim=2)  # (B, T, C), 2 × (B, T, Hkv·D)
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        start = cache.length if cache is not None else 0  # tokens before these T (when generating)
        if self.rope_base is not None:
            q, k = rotary(q, start, self.rope_base), rotary(k, start, self.rope_base)
        if cache is not None:
            k, v = cache.extend(layer, k, v)  # (B, Hkv, S, D): the cached tokens, then these T
        if Hkv < H:  # grouped-query attention: key/value head j serves query heads j·H/Hkv … (j+1)·H/Hkv − 1
            k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)  # (B, H, S, D)
        S = k.shape[2]
        if self.fast:
            p = self.dropout if self.training else 0.0
            scale = None if self.scale_attn else 1.0  # None: SDPA's default 1/sqrt(D)
            mask = None if S == T else causal_mask(T, S, x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=S == T, dropout_p=p, scale=scale)
        else:
            att = q @ k.transpose(-2, -1)  # (B, H, T, S) scores
            if self.scale_attn:
                att = att / math.sqrt(D)
            att = att.masked_fill(~causal_mask(T, S, x.device), float("-inf"))  # (B, H, T, S) no looking ahead
            att = self.attn_drop(F.softmax(att, dim=-1))  # (B, H, T, S) rows sum to 1
            y = att @ v  # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C) heads side by side
        return self.resid_drop(self.c_proj(y))  # (B, T, C)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        inner = cfg.n_inner or 4 * cfg.n_embd
        self.c_fc = nn.Linear(cfg.n_embd, inner, bias=cfg.bias)
        self.c_proj = nn.Linear(inner, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.c_fc(x), approximate="tanh")  # (B, T, 4C) GPT-2's "gelu_new"
        return self.drop(self.c_proj(h))  # (B, T, C)


def norm(cfg: GPTConfig) -> nn.Module:
    """GPT-2's LayerNorm or Llama's RMSNorm, as the config says."""
    if cfg.norm == "rms":
        return RMSNorm(cfg.n_embd, cfg.layer_norm_eps)
    return nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = norm(cfg)
        inner = cfg.n_inner or 4 * cfg.n_embd
        self.mlp = SwiGLU(cfg.n_embd, inner, cfg.bias, cfg.dropout) if cfg.mlp == "swiglu" else MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)  # (B, T, C)
        return x + self.mlp(self.ln_2(x))  # (B, T, C)


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)  # token embeddings (V, C)
        if cfg.pos == "learned":
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)  # position embeddings (block, C)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_head:
            self.lm_head.weight = self.wte.weight  # tied, as in GPT-2: one (V, C) matrix
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by 1/sqrt(2·n_layer)
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def use_fast(self, on: bool = True) -> "GPT":
        """Switch the fast path (fused SDPA attention; bf16 autocast when a Trainer runs it on a GPU) on or off in
        place, e.g. for a model loaded from a checkpoint. The weights are untouched. Returns the model."""
        if not isinstance(on, bool):
            raise TinyldError(f"use_fast takes True or False, got {on!r}")
        self.config.fast = on
        for m in self.modules():
            if isinstance(m, CausalSelfAttention):
                m.fast = on
        return self

    def num_params(self) -> int:
        """Parameter count P, a tied embedding/head counted once (as GPT-2's 124,439,808)."""
        return sum(p.numel() for p in self.parameters())

    def check_input(self, idx: torch.Tensor, start: int = 0) -> None:
        """Clear errors for the three classic input mistakes: wrong shape/dtype, too long, id out of range.
        ``start``: tokens already in a KV cache before these."""
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
            shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
            fix = "add a batch dim with idx[None]" if isinstance(idx, torch.Tensor) and idx.dim() == 1 else \
                "give a (B, T) tensor of token ids"
            raise TinyldError(f"GPT expects token ids of shape (B, T), got {shape}; {fix}")
        if idx.shape[0] == 0:
            raise TinyldError("empty batch (B=0): give the model at least one sequence")
        if idx.dtype not in (torch.long, torch.int32, torch.int64):
            raise TinyldError(f"token ids must be integers (torch.long), got dtype {idx.dtype}")
        T = idx.shape[1] + start
        if T > self.config.block_size:
            raise TinyldError(
                f"sequence length T={T} exceeds the model's block_size={self.config.block_size}: "
                f"truncate to the last {self.config.block_size} tokens or use a config with a larger block_size")
        if idx.shape[1] == 0:
            raise TinyldError("empty sequence (T=0): give the model at least one token")
        if torch.compiler.is_compiling() or _is_wrapped(idx):  # compiled, or inside vmap: values not inspected
            return
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= self.config.vocab_size:
            bad = hi if hi >= self.config.vocab_size else lo
            raise TinyldError(
                f"token id {bad} is outside the vocabulary [0, {self.config.vocab_size}): the tokenizer and the "
                f"model disagree — build the model with vocab_size=tokenizer.vocab_size")

    def hidden(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Final hidden states (after ln_f), the features the head reads: (B, T, C). With a ``cache``, ``idx``
        continues the tokens the cache holds (their keys and values are reused) and the cache grows by T."""
        start = cache.length if isinstance(cache, KVCache) else 0
        self.check_input(idx, start)
        if cache is not None and (not isinstance(cache, KVCache) or len(cache.keys) != self.config.n_layer):
            raise TinyldError(f"cache must be a KVCache({self.config.n_layer}) for this model's {self.config.n_layer} "
                              f"blocks, got {cache!r:.60}")
        if cache is not None and cache.length and cache.keys[0].shape[0] != idx.shape[0]:
            raise TinyldError(f"the cache holds {cache.keys[0].shape[0]} sequences but idx has {idx.shape[0]}")
        B, T = idx.shape
        x = self.wte(idx)  # (B, T, C)
        if self.config.pos == "learned":
            x = x + self.wpe(torch.arange(start, start + T, device=idx.device))  # (B, T, C) + (T, C)
        x = self.drop(x)
        for layer, block in enumerate(self.h):
            x = block(x, cache, layer)  # (B, T, C)
        if cache is not None:
            cache.length += T
        return self.ln_f(x)  # (B, T, C)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits z for the next token at every position: (B, T, V). Position t sees tokens ≤ t only."""
        return self.lm_head(self.hidden(idx, cache))  # (B, T, V)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
                 eos_id: int | None = None, generator: torch.Generator | None = None,
                 use_cache: bool = True) -> torch.Tensor:
        """Continue ``idx`` (B, T). temperature 0 = greedy. Stops early when every row has produced ``eos_id``.

        With ``use_cache`` each step feeds only the new token and reuses the keys and values of the earlier ones
        (:class:`~tinyld.blocks.KVCache`); the result is the uncached one up to rounding. Past ``block_size``
        tokens it falls back to the uncached window of the last ``block_size`` tokens."""
        check_int("max_new_tokens", max_new_tokens, 0)
        check_number("temperature", temperature, 0)
        if top_k is not None:
            check_int("top_k", top_k, 1)
        self.check_input(idx)
        if not isinstance(use_cache, bool):
            raise TinyldError(f"use_cache must be True or False, got {use_cache!r}")
        done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)  # (B,)
        cache = KVCache(self.config.n_layer) if use_cache else None
        for _ in range(max_new_tokens):
            if cache is not None and idx.shape[1] <= self.config.block_size:
                logits = self(idx[:, cache.length:], cache)[:, -1, :]  # (B, V): only the tokens not yet cached
            else:
                cache = None
                logits = self(idx[:, -self.config.block_size:])[:, -1, :]  # (B, V)
            if temperature == 0.0:
                nxt = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]  # (B, 1)
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)  # (B, 1)
            if eos_id is not None:
                nxt = torch.where(done[:, None], torch.full_like(nxt, eos_id), nxt)
                done |= nxt[:, 0] == eos_id
            idx = torch.cat([idx, nxt], dim=1)  # (B, T+1)
            if eos_id is not None and bool(done.all()):
                break
        return idx

    # ---------------------------------------------------------------- local Hugging Face GPT-2 import
    @classmethod
    def from_hf(cls, folder: str | Path, fast: bool = False) -> "GPT":
        """Load a local Hugging Face GPT-2 folder (config.json + model.safetensors or pytorch_model.bin).

        No network. HF's GPT-2 stores its linear layers as Conv1D with weight (in, out): those four are
        transposed into nn.Linear's (out, in).
        """
        if not isinstance(folder, (str, os.PathLike)):
            raise TinyldError(f"from_hf needs a folder path, got {type(folder).__name__}")
        folder = Path(folder)
        cfg = _hf_config(folder, fast)
        sd = _read_hf_weights(folder)
        model = cls(cfg)
        _copy_hf_weights(model, sd, folder)
        bad = first_nonfinite(model)
        if bad:
            raise TinyldError(f"the weights in {folder} hold NaN or inf (in {bad!r}): the file is damaged or comes "
                              "from a diverged run")
        return model


def _hf_config(folder: Path, fast: bool) -> GPTConfig:
    """The GPTConfig of a Hugging Face GPT-2 folder's config.json; anything that is not plain GPT-2 is refused."""
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise TinyldError(f"no config.json in {folder}: point from_hf at a Hugging Face GPT-2 folder "
                          "(config.json + model.safetensors or pytorch_model.bin)")
    try:
        hf = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise TinyldError(f"{cfg_path} is not readable JSON ({e}): copy the folder again") from None
    if not isinstance(hf, dict):
        raise TinyldError(f"{cfg_path} must hold a JSON object, got a {type(hf).__name__}")
    if hf.get("model_type", "gpt2") != "gpt2":
        raise TinyldError(f"{cfg_path} describes a {hf.get('model_type')!r} model; only GPT-2 imports")
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise TinyldError(f"activation_function={act!r} is not GPT-2's GELU-tanh; cannot import exactly")
    if "n_embd" not in hf:
        raise TinyldError(f"{cfg_path} lacks the GPT-2 field 'n_embd'")
    n_embd = hf["n_embd"]
    if hf.get("n_inner") not in (None, 4 * n_embd):
        raise TinyldError(f"n_inner={hf['n_inner']} ≠ 4·n_embd: not supported")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
        if hf.get(flag):
            raise TinyldError(f"{cfg_path}: {flag}=true changes GPT-2's outputs and is not supported")
    try:
        cfg = GPTConfig(vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"],
                        n_head=hf["n_head"], n_embd=n_embd, layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                        scale_attn=bool(hf.get("scale_attn_weights", True)),
                        tie_head=bool(hf.get("tie_word_embeddings", True)), fast=fast)
    except KeyError as e:
        raise TinyldError(f"{cfg_path} lacks the GPT-2 field {e.args[0]!r}") from None
    except TinyldError as e:
        raise TinyldError(f"{cfg_path}: {e}") from None
    return cfg


def _copy_hf_weights(model: GPT, sd, folder: Path) -> None:
    """Copy a Hugging Face GPT-2 state dict into ``model``: Conv1D weights transposed, the old causal-mask buffers
    and a tied head skipped; an unknown, missing or misshapen tensor is refused."""
    cfg = model.config
    ours = model.state_dict()
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    loaded = {}
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(w, torch.Tensor)
                                           for k, w in sd.items()):
        raise TinyldError(f"the weights file in {folder} is not a dict of named tensors: not a GPT-2 checkpoint")
    for key, w in sd.items():
        k = key.removeprefix("transformer.")
        if k.endswith((".attn.bias", ".attn.masked_bias")) or (k == "lm_head.weight" and cfg.tie_head):
            continue  # old causal-mask buffers; a tied head is wte itself
        if k not in ours:
            raise TinyldError(f"unexpected tensor {key!r} in {folder}: not a GPT-2 LM checkpoint?")
        if k.endswith(conv1d):
            w = w.t()
        if tuple(w.shape) != tuple(ours[k].shape):
            raise TinyldError(f"tensor {key!r} has shape {tuple(w.shape)}, config.json implies "
                              f"{tuple(ours[k].shape)}: config and weights disagree")
        loaded[k] = w
    missing = sorted(set(ours) - set(loaded) - ({"lm_head.weight"} if cfg.tie_head else set()))
    if missing:
        raise TinyldError(f"{folder} lacks tensors {missing[:4]}{'…' if len(missing) > 4 else ''}: "
                          "incomplete checkpoint")
    with torch.no_grad():
        for k, w in loaded.items():
            ours[k].copy_(w)


def _read_hf_weights(folder: Path) -> dict:
    st, pt = folder / "model.safetensors", folder / "pytorch_model.bin"
    try:
        if st.is_file():
            from safetensors.torch import load_file

            return load_file(str(st))
        if pt.is_file():
            return torch.load(pt, map_location="cpu", weights_only=True)
    except Exception as e:  # code inside, or a truncated or corrupt file
        import pickle

        if isinstance(e, pickle.UnpicklingError) and ("Unsupported global" in str(e) or "weights_only" in str(e)):
            raise TinyldError(f"{pt} carries Python code or objects other than tensors; tinyld never runs code "
                              "from a weights file (torch.load weights_only=True). Use model.safetensors, or "
                              "re-save the tensors if you trust the file's author") from None
        first = str(e).splitlines()[0][:200] if str(e) else ""
        raise TinyldError(f"could not read weights in {folder} ({type(e).__name__}: {first}); "
                          "the file is corrupt or truncated — copy it again") from None
    raise TinyldError(f"no model.safetensors or pytorch_model.bin in {folder}")


def _is_wrapped(t: torch.Tensor) -> bool:
    check = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return bool(check and check(t))
