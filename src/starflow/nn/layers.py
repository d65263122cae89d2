"""Transformer layers with the official parameter names (so official state dicts load as they are)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .kv_cache import KVCache
from .precision import upcast
from .rope import apply_rotary

__all__ = ["RMSNorm", "make_norm", "Attention", "MLP", "TransformerLayer"]


class RMSNorm(torch.nn.Module):
    """RMSNorm with a unit offset (weight starts at 0 and multiplies by 1 + w), computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = upcast(x)
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * (1 + upcast(self.weight))).type_as(x)


def make_norm(kind: str, dim: int) -> torch.nn.Module:
    if kind == "layer_norm":
        return torch.nn.LayerNorm(dim)
    if kind == "rms_norm":
        return RMSNorm(dim)
    return torch.nn.Identity()


class Attention(torch.nn.Module):
    def __init__(self, channels: int, head_dim: int, norm_type: str, num_heads: int | None, num_kv_heads: int | None,
                 qk_norm: bool, post_norm: bool, bias: bool, hf_style_rope: bool):
        super().__init__()
        self.norm = make_norm(norm_type, channels)
        self.head_dim = head_dim
        self.num_heads = num_heads or channels // head_dim
        self.num_kv_heads = num_kv_heads or self.num_heads
        self.q_size = self.num_heads * head_dim
        self.kv_size = self.num_kv_heads * head_dim
        self.qkv = torch.nn.Linear(channels, self.q_size + 2 * self.kv_size, bias=bias)
        self.proj = torch.nn.Linear(self.q_size, channels, bias=bias)
        self.query_norm = RMSNorm(head_dim) if qk_norm else None
        self.key_norm = RMSNorm(head_dim) if qk_norm else None
        self.post_norm = RMSNorm(channels) if post_norm else None
        # the official scale is (d ** -0.25) ** 2, kept bit for bit
        self.scale = (head_dim ** -0.25) ** 2
        self.hf_style_rope = hf_style_rope

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, *,
                cache: KVCache | None = None, layer: int = 0, causal: bool = True,
                attn_mask: torch.Tensor | None = None, temp: float = 1.0) -> torch.Tensor:
        B, L, _ = x.shape                                                  # (B, L, D)
        q, k, v = self.qkv(self.norm(x)).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(B, L, self.num_heads, self.head_dim).transpose(1, 2)     # (B, H, L, d)
        k = k.view(B, L, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, L, d)
        v = v.view(B, L, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.query_norm is not None:
            q, k = self.query_norm(q), self.key_norm(k)
        if rope is not None:  # tables already sliced to this call's positions
            q = apply_rotary(q, *rope, hf_style=self.hf_style_rope)
            k = apply_rotary(k, *rope, hf_style=self.hf_style_rope)
        q, k, v = q.to(x.dtype), k.to(x.dtype), v.to(x.dtype)
        prefix = 0
        if cache is not None:
            prefix = cache.pos
            k, v = cache.write(layer, k.to(cache.k.dtype), v.to(cache.v.dtype))
            k, v = k.to(x.dtype), v.to(x.dtype)
        is_causal = causal and attn_mask is None
        if is_causal and prefix > 0:
            # queries sit at the end of the key sequence: SDPA's is_causal aligns top-left, so mask explicitly
            is_causal = False
            if L > 1:
                attn_mask = torch.ones(L, k.size(2), dtype=torch.bool, device=x.device).tril(diagonal=prefix)
        gqa = self.num_kv_heads != self.num_heads
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                             scale=self.scale / temp, enable_gqa=gqa)
        out = self.proj(out.transpose(1, 2).reshape(B, L, self.q_size))
        return self.post_norm(out) if self.post_norm is not None else out


class MLP(torch.nn.Module):
    def __init__(self, channels: int, expansion: float, swiglu: bool, norm_type: str, post_norm: bool, bias: bool):
        super().__init__()
        self.norm = make_norm(norm_type, channels)
        self.post_norm = RMSNorm(channels) if post_norm else None
        self.swiglu = swiglu
        hidden = int(channels * expansion)
        if swiglu:
            self.gate_proj = torch.nn.Linear(channels, hidden, bias=bias)
            self.up_proj = torch.nn.Linear(channels, hidden, bias=bias)
            self.down_proj = torch.nn.Linear(hidden, channels, bias=bias)
        else:
            self.main = torch.nn.Sequential(torch.nn.Linear(channels, hidden, bias=bias), torch.nn.GELU(),
                                            torch.nn.Linear(hidden, channels, bias=bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        if self.swiglu:
            x = self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))
        else:
            x = self.main(x)
        return self.post_norm(x) if self.post_norm is not None else x


class TransformerLayer(torch.nn.Module):
    """Pre-norm residual layer: x + attn(x), then + mlp(x)."""

    def __init__(self, channels: int, head_dim: int, *, expansion: float = 4.0, swiglu: bool = False,
                 norm_type: str = "layer_norm", num_heads: int | None = None, num_kv_heads: int | None = None,
                 qk_norm: bool = False, post_norm: bool = False, bias: bool = True, hf_style_rope: bool = False):
        super().__init__()
        self.attention = Attention(channels, head_dim, norm_type, num_heads, num_kv_heads, qk_norm, post_norm, bias,
                                   hf_style_rope)
        self.mlp = MLP(channels, expansion, swiglu, norm_type, post_norm, bias)

    def forward(self, x, rope, **attn_kwargs):
        x = x + self.attention(x, rope, **attn_kwargs)
        return x + self.mlp(x)
