"""Transformer layers with the official parameter names (so official state dicts load as they are)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .causal_attention import blocked_causal_attention, causal_mask, use_blocked_causal
from .kv_cache import KVCache
from .packed import linear_then
from .precision import upcast
from .rope import apply_rotary, apply_rotary_cis

__all__ = ["RMSNorm", "make_norm", "Attention", "MLP", "TransformerLayer", "causal_mask"]

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

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, ...] | None, *,
                cache: KVCache | None = None, layer: int = 0, causal: bool = True,
                attn_mask: torch.Tensor | None = None, temp: float = 1.0,
                residual: torch.Tensor | None = None, keep: int | None = None) -> torch.Tensor | None:
        """x (B, L, D) -> (B, L, D), plus `residual` when given (one oneDNN call with the output projection where
        its weight is packed: nn.packed.linear_then).

        rope: (cos, sin) tables (L, head_dim) for this call's positions, optionally with a third entry,
        their complex form (L, 1, head_dim/2) from `rotary_cis` (the trunk makes it once for all layers;
        without it the pairwise real form gives the same numbers).
        attn_mask: bool (True = attend) or additive float mask (L, S); it replaces the causal rule.
        keep: only the last `keep` positions' outputs are wanted, (B, keep, D) (every position's key and value
        still enter the cache); keep=0 only writes the cache and returns None.
        """
        B, L, _ = x.shape                                                  # (B, L, D)
        H, Hk, d = self.num_heads, self.num_kv_heads, self.head_dim
        # split (not slicing): its backward is one concatenation, slicing's a zero-filled copy per piece
        qk, v = self.qkv(self.norm(x)).split([self.q_size + self.kv_size, self.kv_size], dim=-1)
        v = v.view(B, L, Hk, d)                                            # (B, L, Hkv, d)
        if self.query_norm is None and not self.hf_style_rope:
            # q and k side by side (B, L, H + Hkv, d): one rotation pass for both
            qk = qk.view(B, L, H + Hk, d)
            if rope is not None:
                if len(rope) > 2:
                    qk = apply_rotary_cis(qk, rope[2])
                else:
                    qk = apply_rotary(qk, rope[0][:, None], rope[1][:, None])
            q, k = qk.split([H, Hk], dim=2)
        else:
            q, k = qk.split([self.q_size, self.kv_size], dim=-1)
            q, k = q.view(B, L, H, d), k.view(B, L, Hk, d)
            if self.query_norm is not None:  # per head over d: the same in either layout
                q, k = self.query_norm(q), self.key_norm(k)
            if rope is not None:  # tables already sliced to this call's positions
                cos, sin = rope[0][:, None], rope[1][:, None]
                q = apply_rotary(q, cos, sin, hf_style=self.hf_style_rope)
                k = apply_rotary(k, cos, sin, hf_style=self.hf_style_rope)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, L, d)
        dt = x.dtype
        if q.dtype != dt:
            q, k = q.to(dt), k.to(dt)
        prefix = 0
        if cache is not None:
            prefix = cache.pos
            ct = cache.dtype
            k, v = cache.write(layer, k if k.dtype == ct else k.to(ct), v if v.dtype == ct else v.to(ct))
            if ct != dt:
                k, v = k.to(dt), v.to(dt)
        is_causal = causal and attn_mask is None
        if keep is not None and keep < L:
            if keep == 0:
                return None
            # the last `keep` queries: the rows of the mask they use, or (causal) the keys before and up to each
            q, L = q[:, :, L - keep:], keep
            residual = residual[:, -keep:] if residual is not None else None
            if attn_mask is not None:
                attn_mask = attn_mask[..., -keep:, :]
            elif is_causal:
                is_causal, attn_mask = False, causal_mask(keep, k.size(2) - keep, x.device)
        if is_causal and prefix > 0:
            # queries sit at the end of the key sequence: SDPA's is_causal aligns top-left, so mask explicitly
            # (Trunk.run builds this mask once per call and passes it in)
            is_causal = False
            if L > 1:
                attn_mask = causal_mask(L, prefix, x.device)
        if attn_mask is not None and attn_mask.is_floating_point() and attn_mask.dtype != q.dtype:
            attn_mask = attn_mask.to(q.dtype)      # SDPA takes a float mask in float32 or the queries' dtype only
        gqa = self.num_kv_heads != self.num_heads
        if is_causal and use_blocked_causal(q, k):     # short sequences on a CPU (nn.causal_attention)
            out = blocked_causal_attention(q, k, v, self.scale / temp)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                                 scale=self.scale / temp, enable_gqa=gqa)
        return _project(self.proj, out.transpose(1, 2).reshape(B, L, self.q_size), self.post_norm, residual)


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

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L, D) -> (B, L, D), plus `residual` when given. The activation and the residual addition run
        inside the products where the weights are packed (nn.packed.linear_then), in steps otherwise."""
        x = self.norm(x)
        if self.swiglu:
            x = linear_then(self.up_proj, x, "mul", linear_then(self.gate_proj, x, "gelu", approximate="tanh"))
            down = self.down_proj
        else:  # main = (Linear, GELU, Linear), a Sequential for the official parameter names
            up, act, down = self.main
            x = linear_then(up, x, "gelu", approximate=act.approximate)
        return _project(down, x, self.post_norm, residual)


class TransformerLayer(torch.nn.Module):
    """Pre-norm residual layer: x + attn(x), then + mlp(x)."""

    def __init__(self, channels: int, head_dim: int, *, expansion: float = 4.0, swiglu: bool = False,
                 norm_type: str = "layer_norm", num_heads: int | None = None, num_kv_heads: int | None = None,
                 qk_norm: bool = False, post_norm: bool = False, bias: bool = True, hf_style_rope: bool = False):
        super().__init__()
        self.attention = Attention(channels, head_dim, norm_type, num_heads, num_kv_heads, qk_norm, post_norm, bias,
                                   hf_style_rope)
        self.mlp = MLP(channels, expansion, swiglu, norm_type, post_norm, bias)

    def forward(self, x, rope, keep: int | None = None, **attn_kwargs):
        """keep: only the last `keep` positions' outputs (Attention.forward); 0: write the cache, return None."""
        x = self.attention(x, rope, residual=x, keep=keep, **attn_kwargs)
        return None if x is None else self.mlp(x, residual=x)


def _project(linear: torch.nn.Linear, x: torch.Tensor, post_norm: torch.nn.Module | None,
             residual: torch.Tensor | None) -> torch.Tensor:
    """A sublayer's output projection, its optional post-norm, and the residual addition (residual + out)."""
    if post_norm is None and residual is not None:
        return linear_then(linear, x, "add", residual)
    out = linear(x)
    if post_norm is not None:
        out = post_norm(out)
    return out if residual is None else residual + out
