"""The STARFlow model: patchify, a stack of flow blocks (shallow ones, then the deep one), a denoiser."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from einops import rearrange

from ..config import ModelConfig
from ..nn.precision import upcast
from ..nn.rope import RotaryEmbedding
from ..nn.trunk import Trunk
from .block import FlowBlock, IdentityFlowBlock

__all__ = ["StarFlow", "FlowOutput", "Denoiser", "BlockView"]


@dataclass
class FlowOutput:
    z: torch.Tensor                   # same shape as x
    block_outputs: list[torch.Tensor]  # patchified input, then each block's output: (B, h, w, c) / (B, T, h, w, c)
    logdets: list[torch.Tensor]        # one per block, in the data's order through the blocks


@dataclass(frozen=True)
class BlockView:
    """How one block sees a batch: its layout of the tokens, frames, text, positions and guidance.

    Worked out once, by `StarFlow.block_views`, for the likelihood pass, both samplers, image-to-video
    prefixes and the sliding window alike."""
    index: int
    block: torch.nn.Module     # FlowBlock, or IdentityFlowBlock for a block of zero layers
    deep: bool                 # the last block (next to the noise)
    local: bool                # a shallow block of a video model that sees one frame at a time
    video_frames: int          # T of the batch (1 for images)
    frames: int                # frames in one of the block's sequences: 1 when local, T otherwise
    text: torch.Tensor | None  # what the block reads: y ([y; y_null] when guided in sampling), or None
    rope: tuple | None         # its position tables (text first, then frames x h x w)
    guidance: float            # this block's guidance weight; 0: unguided

    @property
    def identity(self) -> bool:
        return isinstance(self.block, IdentityFlowBlock)

    def to_block(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) tokens, raster and frame-major -> the block's sequences ((B T, hw, C) when local)."""
        if not self.local:
            return tokens
        return tokens.reshape(tokens.size(0) * self.video_frames, -1, tokens.size(-1))

    def from_block(self, tokens: torch.Tensor) -> torch.Tensor:
        """The block's sequences -> (B, N, C)."""
        if not self.local:
            return tokens
        return tokens.reshape(tokens.size(0) // self.video_frames, -1, tokens.size(-1))


class Denoiser(Trunk):
    """Learnable self-denoiser: a non-causal trunk, block-causal in time for videos (official NonCausalBlock)."""

    def __init__(self, in_channels: int, channels: int, head_dim: int, *, block_causal: int, window: int | None,
                 num_layers: int = 8, **trunk_kwargs):
        super().__init__(in_channels, in_channels, channels, num_layers, head_dim, **trunk_kwargs)
        self.block_causal = block_causal
        self.window = window

    def video_mask(self, frames: int, frame_tokens: int, n_txt: int, device) -> torch.Tensor:
        """Text keys are always visible; image keys from frames in [f(q) + A - 1 - G, f(q) + A - 1]."""
        S = n_txt + frames * frame_tokens
        q = torch.arange(S, device=device)[:, None]
        k = torch.arange(S, device=device)[None, :]
        A, G = self.block_causal, self.window if self.window is not None else 10000
        kf = torch.div(k - n_txt, frame_tokens, rounding_mode="floor")
        qf = torch.div(q - n_txt, frame_tokens, rounding_mode="floor")
        qf_relu = torch.div((q - n_txt).clamp(min=0), frame_tokens, rounding_mode="floor")
        return (k < n_txt) | ((kf >= qf + A - 1 - G) & (kf <= qf_relu + A - 1))


class StarFlow(torch.nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = c = config
        lpb = c.layers_per_block_full
        # video: shallow blocks reverse within each frame, so that every block keeps frames in time order
        alt = "flip_in_frame" if c.is_temporal_causal else "flip"
        orders = ["identity", alt]
        shift = 1 if c.seq_order == "L2R" else 0
        common = dict(head_dim=c.head_dim, sos=c.sos, softplus=c.use_softplus, swiglu=c.use_swiglu,
                      norm_type=c.norm_type, num_kv_heads=c.num_kv_heads, qk_norm=c.use_qk_norm,
                      post_norm=c.use_post_norm, bias=c.use_bias, final_norm=c.use_final_norm,
                      soft_clip=c.soft_clip, expansion=c.expansion, hf_style_rope=c.hf_style_rope,
                      num_positions=None if c.rope else c.grid_size ** 2)
        blocks: list[torch.nn.Module] = []
        for i in range(c.blocks):
            deep = i == c.blocks - 1
            if lpb[i] == 0:
                blocks.append(IdentityFlowBlock())
                continue
            channels = c.top_channels if deep else c.channels
            num_heads = c.num_heads if (c.num_heads is not None or not deep) else channels // c.head_dim
            txt_dim = c.txt_dim if (deep or not c.cond_top_only) else 0
            blocks.append(FlowBlock(c.token_channels, channels, lpb[i], order=orders[(i + shift) % 2],
                                    txt_dim=txt_dim, num_heads=num_heads, **common))
        self.blocks = torch.nn.ModuleList(blocks)
        if c.learnable_self_denoiser:
            self.learnable_self_denoiser = Denoiser(
                c.token_channels, c.channels, c.head_dim, block_causal=c.temporal_causal, window=c.denoiser_window,
                txt_dim=c.txt_dim if c.conditional_denoiser else 0, num_heads=c.num_heads,
                num_kv_heads=c.num_kv_heads, expansion=c.expansion, swiglu=c.use_swiglu, norm_type=c.norm_type,
                qk_norm=c.use_qk_norm, post_norm=c.use_post_norm, bias=c.use_bias,
                final_norm=c.use_final_norm, hf_style_rope=c.hf_style_rope)
        else:
            self.learnable_self_denoiser = None
        self.rope = RotaryEmbedding(c.head_dim, c.rope_pt_seq_len, c.txt_size) if c.rope else None

    # ---- saving and loading (safetensors + JSON config; formats in flow.io) ------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write `config.json` + `model.safetensors` into `directory` (atomically)."""
        from .io import save_model
        return save_model(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device | None = None,
                        torch_dtype: torch.dtype | None = None) -> "StarFlow":
        """A model saved by `save_pretrained` (or a `starflow train` export), strictly loaded, in eval mode."""
        from .io import load_model
        return load_model(directory, device=device, dtype=torch_dtype)

    # ---- shapes -----------------------------------------------------------------------------------
    @property
    def deep(self) -> FlowBlock:
        return self.blocks[-1]

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, h, w, p p C); (B, T, C, H, W) -> (B, T, h, w, p p C)."""
        p = self.config.patch_size
        return rearrange(x, "... c (h p1) (w p2) -> ... h w (p1 p2 c)", p1=p, p2=p)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        p = self.config.patch_size
        return rearrange(x, "... h w (p1 p2 c) -> ... c (h p1) (w p2)", p1=p, p2=p)

    def check_input(self, x: torch.Tensor, y: torch.Tensor | None, name: str = "x") -> None:
        c = self.config
        if x.dim() not in (4, 5):
            raise ValueError(f"{name} must be (B, C, H, W) or (B, T, C, H, W), got shape {tuple(x.shape)}")
        if x.size(-3) != c.channel_size:
            raise ValueError(f"{name} has {x.size(-3)} channels; the model takes {c.channel_size} "
                             f"(shape {tuple(x.shape)}: images are (B, C, H, W), videos (B, T, C, H, W))")
        if x.size(-1) % c.patch_size or x.size(-2) % c.patch_size:
            raise ValueError(f"{name} spatial size {tuple(x.shape[-2:])} is not a multiple of patch_size {c.patch_size}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        if c.txt_dim > 0 and any(getattr(b, "conditioned", False) for b in self.blocks):
            if y is None:
                raise ValueError("this model is text/label conditioned: pass y of shape (B, txt_size, txt_dim)")
            if y.dim() != 3 or y.size(-1) != c.txt_dim:
                raise ValueError(f"y must be (B, L, {c.txt_dim}) text embeddings, got shape {tuple(y.shape)}")
            if y.size(0) != x.size(0):
                raise ValueError(f"y has {y.size(0)} rows for {x.size(0)} items of {name}: one text per item")
            if not torch.isfinite(y).all():
                raise ValueError("y contains NaN or infinite values")

    def rope_tables(self, trunk: torch.nn.Module, h: int, w: int, frames: int, text: torch.Tensor | None):
        """Position tables for a trunk: text tokens first when it reads text, then `frames` grids of h x w
        (frames 0: an image). None with learned positions."""
        if self.rope is None:
            return None
        n_txt = text.size(1) if text is not None and getattr(trunk, "conditioned", False) else 0
        return self.rope.tables(h, w, n_txt, frames, self.rope.freqs.device)

    def block_views(self, shape: torch.Size, y: torch.Tensor | None = None, guidance: float = 0.0, *,
                    y_null: torch.Tensor | None = None, sampling: bool = False) -> list[BlockView]:
        """Each block's view of a batch whose patchified shape is `shape` ((B, h, w, c) / (B, T, h, w, c)),
        in the data's order through the blocks (the samplers walk it backwards).

        Guidance: a block is guided when it reads text and either it is the deep block or we are sampling.
        That is the official code's rule in both directions: its likelihood pass guides only the deep
        block (shallow blocks get the doubled batch unguided), while its sampler guides every block that
        reads text, which is the deep block alone when `cond_top_only`. When sampling, a guided block reads
        [y; y_null] (the sampler doubles the batch); in the likelihood pass the caller doubles x and y."""
        c = self.config
        video = len(shape) == 5
        T = shape[1] if video else 1
        gh, gw = shape[-3], shape[-2]
        views = []
        for i, block in enumerate(self.blocks):
            deep = i == len(self.blocks) - 1
            local = video and c.shallow_block_local and not deep
            reads = getattr(block, "conditioned", False)
            w = guidance if (reads and guidance > 0 and (deep or sampling)) else 0.0
            text = None
            if reads:
                text = torch.cat([y, y_null]) if (sampling and w > 0) else y
            rope_frames = 1 if local else (T if video else 0)
            views.append(BlockView(i, block, deep, local, T, 1 if local else T, text,
                                   self.rope_tables(block, gh, gw, rope_frames, text), w))
        return views

    # ---- likelihood direction ----------------------------------------------------------------------
    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, guidance: float = 0.0) -> FlowOutput:
        """Map data x (B, C, H, W) or (B, T, C, H, W) to noise z. With guidance > 0, x and y are doubled
        batches [cond; uncond] and the deep block uses the guided parameters (as the official forward)."""
        self.check_input(x, y)
        h = self.patchify(x)                                    # (B, [T,] h, w, c)
        shape = h.shape
        outputs, logdets = [h], []
        tokens = h.reshape(shape[0], -1, shape[-1])             # (B, N, c), frame-major raster order
        for v in self.block_views(shape, y, guidance):
            z, logdet = v.block(v.to_block(tokens), v.text, v.rope, v.frames, v.guidance)
            if v.local and logdet.dim() == 3:
                logdet = logdet.reshape(shape[0], v.video_frames, *logdet.shape[1:])   # (B, T, hw, c)
            tokens = v.from_block(z)
            outputs.append(tokens.reshape(shape))
            logdets.append(logdet)
        z = self.unpatchify(outputs[-1])
        return FlowOutput(z, outputs, logdets)

    @staticmethod
    def loss_terms(z: torch.Tensor, logdets: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample (0.5 mean z^2, -sum mean logdet): the official loss before averaging over the batch."""
        loss_z = 0.5 * upcast(z).pow(2).mean(dim=tuple(range(1, z.dim())))
        loss_logdet = -sum(ld.mean(dim=tuple(range(1, ld.dim()))) for ld in logdets)
        return loss_z, loss_logdet

    def denoise_output(self, x: torch.Tensor, y: torch.Tensor | None = None, last_frames: int | None = None, *,
                       denoiser: Denoiser | None = None) -> torch.Tensor:
        """Raw prediction of the learnable self-denoiser for x (same shape and dtype as x).

        last_frames (videos): only the last that many frames' predictions, (B, last_frames, C, H, W). Every frame
        is still read, but the trunk's last layer computes its queries, MLP and head for those frames alone
        (Trunk.run outputs=): a video denoised in windows keeps only each window's new frames (sampling.denoise).
        denoiser: a stand-in for the model's own, of its structure (its bf16 copy: sampling.denoise), which reads x
        and y in its own dtype."""
        if self.learnable_self_denoiser is None:
            raise ValueError("this model has no learnable self-denoiser (learnable_self_denoiser=0)")
        d = self.learnable_self_denoiser if denoiser is None else denoiser
        text = y if d.conditioned else None
        self.check_input(x, text)
        h = self.patchify(x)
        shape = h.shape
        video = x.dim() == 5
        T = shape[1] if video else 0
        if last_frames is not None and not (video and 1 <= last_frames <= T):
            raise ValueError(f"last_frames must be between 1 and the video's {T} frames, got {last_frames}"
                             if video else "last_frames applies to videos (B, T, C, H, W) only")
        rope = self.rope_tables(d, shape[-3], shape[-2], T, text)
        mask = None
        if d.block_causal > 0 and video:
            mask = d.video_mask(T, shape[-3] * shape[-2], text.size(1) if text is not None else 0, x.device)
        frame_tokens = shape[-3] * shape[-2]
        out = d.run(h.reshape(h.size(0), -1, shape[-1]), text, rope=rope, causal=False, attn_mask=mask,
                    outputs=None if last_frames is None else last_frames * frame_tokens)
        if last_frames is not None:
            shape = shape[:1] + (last_frames,) + shape[2:]
        return self.unpatchify(out.reshape(shape).to(x.dtype))
