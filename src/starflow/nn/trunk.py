"""The transformer trunk shared by every flow block and by the learnable denoiser.

`Trunk.run` is the one function that calls the transformer: the likelihood pass, the sequential and
Jacobi samplers, cache priming and the denoiser all go through it.
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from .causal_attention import additive_causal_mask
from .kv_cache import KVCache
from .layers import RMSNorm, TransformerLayer
from .rope import rotary_cis

__all__ = ["Trunk"]


class Trunk(torch.nn.Module):
    def __init__(self, in_channels: int, out_channels: int, channels: int, num_layers: int, head_dim: int, *,
                 txt_dim: int = 0, num_heads: int | None = None, num_kv_heads: int | None = None,
                 expansion: float = 4.0, swiglu: bool = False, norm_type: str = "layer_norm", qk_norm: bool = False,
                 post_norm: bool = False, bias: bool = True, final_norm: bool = False, soft_clip: float = 0.0,
                 hf_style_rope: bool = False):
        super().__init__()
        self.proj_in = torch.nn.Linear(in_channels, channels)
        self.proj_out = torch.nn.Linear(channels, out_channels)
        torch.nn.init.zeros_(self.proj_out.weight)  # start as the identity map
        self.txt_dim = txt_dim
        if txt_dim > 0:
            self.proj_txt = torch.nn.Linear(txt_dim, channels)
        self.attn_blocks = torch.nn.ModuleList([
            TransformerLayer(channels, head_dim, expansion=expansion, swiglu=swiglu, norm_type=norm_type,
                             num_heads=num_heads, num_kv_heads=num_kv_heads, qk_norm=qk_norm, post_norm=post_norm,
                             bias=bias, hf_style_rope=hf_style_rope)
            for _ in range(num_layers)])
        if final_norm:
            self.final_norm = RMSNorm(channels)
        self.use_final_norm = final_norm
        self.soft_clip = soft_clip
        self.head_dim = head_dim
        self.hf_style_rope = hf_style_rope      # how its layers pair a head's channels for RoPE (nn.rope)
        self.num_kv_heads = self.attn_blocks[0].attention.num_kv_heads if num_layers else 0
        self.gradient_checkpointing = False

    @property
    def conditioned(self) -> bool:
        return self.txt_dim > 0

    def new_cache(self, batch: int, length: int, device=None, dtype=torch.float32) -> KVCache:
        return KVCache(len(self.attn_blocks), batch, self.num_kv_heads, length, self.head_dim, device, dtype)

    def run(self, x: torch.Tensor | None, text: torch.Tensor | None = None, *,
            rope: tuple[torch.Tensor, torch.Tensor] | None = None, cache: KVCache | None = None,
            pos_embed: torch.Tensor | None = None, causal: bool = True, attn_mask: torch.Tensor | None = None,
            attn_temp: float = 1.0, outputs: int | None = None) -> torch.Tensor | None:
        """Run [text; x] through the layers and return the head's output for the x tokens.

        x: (B, L, C_in) input tokens, or None to only push text into `cache`.
        text: (B, Lt, txt_dim) raw text embeddings (ignored by an unconditioned trunk).
        rope: full (cos, sin) tables; rows [start, start + Lt + L) are used, start = cache.pos (or 0).
        pos_embed: (L, D) learned positions added to the x tokens.
        outputs: only the last `outputs` x tokens' outputs are wanted (None: all): the last layer computes its
        queries, MLP and head for those alone, and for none with 0 (a cache being filled: only its keys and
        values are read later). The other tokens' keys and values enter `cache` as usual.
        Returns (B, outputs or L, C_out) in float32 precision of the head, or None when x is None or outputs is 0.
        """
        w = self.proj_in.weight
        parts = []
        if text is not None and self.conditioned:
            parts.append(self.proj_txt(text.to(w.dtype)))
        n_txt = parts[0].size(1) if parts else 0
        if x is not None:
            h = self.proj_in(x.to(w.dtype))                                  # (B, L, D)
            if pos_embed is not None:
                h = h + pos_embed
            parts.append(h)
        if not parts:
            return None
        h = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]           # (B, Lt + L, D)
        start = cache.pos if cache is not None else 0
        L = h.size(1)
        tables = None
        if rope is not None:
            cos, sin = rope[0], rope[1]
            if start + L > cos.size(0):
                raise ValueError(f"sequence of {start + L} tokens is longer than the position table "
                                 f"({cos.size(0)})")
            cos, sin = cos[start:start + L], sin[start:start + L]
            # the complex form of the tables, made once here rather than in every layer; under torch.compile
            # the layers use the real pairwise form instead (the same products: inductor has no complex codegen)
            tables = (cos, sin) if torch.compiler.is_compiling() else (cos, sin, rotary_cis(cos, sin)[:, None])
        if causal and attn_mask is None and start > 0 and L > 1:
            # queries after cached keys: one explicit mask for all layers (SDPA's is_causal aligns top-left),
            # additive (0 / -inf) as SDPA would turn a boolean one in every layer, in the tokens' dtype (0 and -inf
            # are exact in any: a bf16 mask saves SDPA's bf16 kernel ~20% of a 64-query call against a float32 one;
            # a layer computing in another dtype, nn.precision.layers_compute_in, converts it)
            attn_mask = additive_causal_mask(L, start, h.device, h.dtype)
        kw = dict(cache=cache, causal=causal, attn_mask=attn_mask, temp=attn_temp)
        ckpt = self.gradient_checkpointing and self.training and cache is None and torch.is_grad_enabled()
        if x is None:
            outputs = 0
        elif outputs is not None:
            if outputs < 0:
                raise ValueError(f"outputs must be >= 0 (the last tokens whose outputs are wanted), got {outputs}")
            outputs = min(outputs, x.size(1))
        last = len(self.attn_blocks) - 1
        for i, layer in enumerate(self.attn_blocks):
            keep = outputs if i == last else None
            if ckpt:
                h = checkpoint(layer, h, tables, use_reentrant=False, layer=i, keep=keep, **kw)
            else:
                h = layer(h, tables, layer=i, keep=keep, **kw)
        if cache is not None:
            cache.advance(L)
        if outputs == 0:
            return None
        h = h[:, n_txt:] if outputs is None else h[:, h.size(1) - outputs:]
        if self.use_final_norm:
            h = self.final_norm(h)
        h = self.proj_out(h)
        if self.soft_clip > 0:
            h = self.soft_clip * torch.tanh(h / self.soft_clip)
        return h
