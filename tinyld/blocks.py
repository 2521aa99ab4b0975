"""The parts of a modern decoder (Llama, SmolLM2) that GPT-2 lacks, each small enough to read in a minute.

- :class:`RMSNorm`: scale by the root mean square, no centring and no bias (Zhang & Sennrich 2019).
- :func:`rotary`: rotary position embeddings (RoPE, Su et al. 2021) in the "rotate half" layout of Hugging Face's
  Llama: the query and key of position p are rotated by the angles p·θ_i, so their dot product depends only on the
  distance between the two positions. No learned position table.
- :class:`SwiGLU`: the gated MLP, down(silu(gate(x)) ⊙ up(x)).
- :class:`KVCache`: the keys and values of the tokens seen so far, so generation feeds one new token per step.
- :func:`causal_mask`: True where a query may look, built for the T × S scores at hand (never for the whole
  context: at 8192 tokens one mask per layer would be 64 MiB).

Everything here has forward- and reverse-mode AD, so ``torch.func.jvp``/``vmap`` run through it in float64.
Grouped-query attention (fewer key/value heads than query heads) lives in the attention of :mod:`tinyld.model`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + ε) · weight over the last dim; computed in the input's dtype (float64 stays float64)."""

    def __init__(self, n: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n))  # (C,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight  # (B, T, C)


def rotary(x: torch.Tensor, start: int, base: float) -> torch.Tensor:
    """Rotate queries or keys x (B, H, T, D) at positions start … start+T−1.

    Dimension i < D/2 is paired with i + D/2 and the pair is turned by the angle p·θ_i, θ_i = base^(−2i/D): fast
    turns in the first dims, slow ones in the last. The angles are computed in float64 and then cast to x's dtype.
    """
    T, D = x.shape[-2], x.shape[-1]
    theta = base ** (-torch.arange(0, D, 2, dtype=torch.float64, device=x.device) / D)  # (D/2,)
    pos = torch.arange(start, start + T, dtype=torch.float64, device=x.device)  # (T,)
    angle = torch.cat([torch.outer(pos, theta)] * 2, dim=-1)  # (T, D): each angle twice, once per half
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin  # (B, H, T, D)


class SwiGLU(nn.Module):
    """The gated MLP of Llama: c_proj(silu(gate) ⊙ up), with gate and up from one matmul (c_fc, 2·n_inner rows)."""

    def __init__(self, n_embd: int, n_inner: int, bias: bool, dropout: float = 0.0):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 2 * n_inner, bias=bias)  # rows: gate (n_inner), then up (n_inner)
        self.c_proj = nn.Linear(n_inner, n_embd, bias=bias)
        self.drop = nn.Dropout(dropout)  # as GPT-2's MLP: after the projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.c_fc(x).chunk(2, dim=-1)  # 2 × (B, T, n_inner)
        return self.drop(self.c_proj(F.silu(gate) * up))  # (B, T, C)


def causal_mask(T: int, S: int, device) -> torch.Tensor:
    """(T, S) bool: the T newest of S positions (queries) may see keys up to and including their own position."""
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(S - T)


class KVCache:
    """Keys and values of every block for the tokens seen so far. ``length`` is how many tokens that is."""

    def __init__(self, n_layer: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layer  # each (B, H_kv, length, D)
        self.values: list[torch.Tensor | None] = [None] * n_layer
        self.length = 0

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's k, v (B, H_kv, T, D) to block ``layer``'s and return all of them (the model advances
        ``length`` once per forward, after the last block)."""
        if self.keys[layer] is not None:
            k, v = torch.cat([self.keys[layer], k], dim=2), torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v
