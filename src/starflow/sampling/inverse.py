"""Inverting one flow block: the state both samplers share (`BlockInverse`) and the sliding window's rules.

The samplers (sampling.sequential, sampling.jacobi) each own their loop over `x_full`, the block's input
sequence in block order: x_full[0] is the head token (the SOS embedding, or the first token, which the block
leaves unchanged) and x_full[p + 1] is the token whose affine map the trunk computes from input position p.
Trunk position p always sits at cache position n_txt + p, so the KV cache and RoPE agree by construction.
"""
from __future__ import annotations

import torch

from ..flow.affine import inverse_affine
from ..flow.model import BlockView
from ..nn.kv_cache import KVCache
from ..nn.precision import upcast
from ..nn.rope import apply_rotary, apply_rotary_cis, rotary_cis

__all__ = ["BlockInverse", "window_tokens", "first_target", "slide_window"]


class BlockInverse:
    """State for inverting one block on noise z (B, N, C), the block's tokens in raster order.

    `view` (StarFlow.block_views) gives the block, its text ([y; y_null] when guided), positions, frames
    and guidance weight; guidance doubles the batch and both halves follow the guided parameters.
    `prefix` (B, P, C) are known first tokens, in raster order (whole frames: image-to-video), or already in
    the block's order (`prefix_in_block_order`, any count): pushed into the cache and kept.
    """

    def __init__(self, view: BlockView, z: torch.Tensor, prefix: torch.Tensor | None = None,
                 window_frames: int | None = None, prefix_in_block_order: bool = False):
        block = self.block = view.block
        self.frames, self.guidance, self.rope, self.text = view.frames, view.guidance, view.rope, view.text
        zp = block.permute(upcast(z), self.frames)                      # (B, N, C) block order
        if self.guidance > 0:
            zp = torch.cat([zp, zp])
        self.zp = zp
        self.off = 1 if block.use_sos else 0
        seq = block.input_sequence(zp)
        self.x_full = seq if seq is not zp else zp.clone()              # (B', U + 1, C)
        self.U = self.x_full.size(1) - 1                                # unknown tokens to solve for
        self.frame_tokens = zp.size(1) // self.frames
        self.pos = block.positions_embed(zp.size(1), self.frames)
        self.shift = 0       # input position p sits at position p - shift of the cached sequence (sliding window)
        self.context: tuple[torch.Tensor, int] | None = None   # a slid window's context still to encode (slide)
        n_txt = self.text.size(1) if self.text is not None else 0
        length = n_txt + (min(self.U, window_frames * self.frame_tokens) if window_frames else self.U)
        p = block.proj_in.weight
        self.cache: KVCache = block.new_cache(zp.size(0), length, p.device, p.dtype)
        self.prime_text()
        self.n_txt = self.cache.pos                                     # cache entries holding the text
        self.start = 0
        self.initialised = False                                        # x_full holds a draft (start_from)
        self.maps = self.mapped = None      # the last (scale, shift) computed for each token (solve), if any
        if prefix is not None:
            P = prefix.size(1)
            if prefix_in_block_order:
                pp = prefix.to(zp.dtype)
            elif block.order == "flip":
                raise ValueError("a prefix needs a block order that keeps frames in time order (temporal_causal)")
            else:
                pp = block.permute(prefix.to(zp.dtype), P // self.frame_tokens)
            if self.guidance > 0:
                pp = torch.cat([pp, pp])
            self.x_full[:, self.off:self.off + P] = pp
            self.start = P - 1 + self.off                               # first input position still to run
            if self.start > 0:   # the known frames' maps: the first frame to solve starts from them
                self._maps(self.run(self.x_full[:, :self.start], 0), 0, self.guidance)

    def prime_text(self) -> None:
        if self.text is not None:
            self.block.run(None, self.text, rope=self.rope, cache=self.cache)

    def run(self, inp: torch.Tensor, p: int, attn_temp: float = 1.0, outputs: int | None = None) -> torch.Tensor | None:
        """Trunk on inputs standing at positions [p, p + len) -> raw head output (of the last `outputs`: Trunk.run).
        A context left by `slide` and ending at p runs in the same trunk call, ahead of the inputs."""
        if self.context is not None:
            ctx, c = self.context
            if c + ctx.size(1) == p and attn_temp == 1.0:
                self.context = None
                n = inp.size(1) if outputs is None else min(outputs, inp.size(1))
                return self._run(torch.cat([ctx, inp], 1), c, 1.0, n)
            self.flush()
        return self._run(inp, p, attn_temp, outputs)

    def _run(self, inp: torch.Tensor, p: int, attn_temp: float, outputs: int | None) -> torch.Tensor | None:
        q = p - self.shift
        pe = self.pos[q:q + inp.size(1)] if self.pos is not None else None
        return self.block.run(inp, None, rope=self.rope, cache=self.cache, pos_embed=pe, attn_temp=attn_temp,
                              outputs=outputs)

    def flush(self) -> None:
        """Encode a context left by `slide` now (for a caller that reads the cache itself: a compiled step)."""
        if self.context is not None:
            ctx, c = self.context
            self.context = None
            self._run(ctx, c, 1.0, 0)      # only the context's keys and values are read

    def slide(self, start: int, context: int, reencode: bool = True) -> None:
        """Restart the cache from the text and the `context` tokens before input position `start`, re-encoded
        as a fresh sequence (the official long-video sampler): attention then sees at most the window.
        The text's entries are kept, not re-encoded as the official sampler does: text comes first and attends
        only to itself, so a second priming would write the very same keys and values at the very same places.

        The re-encoding runs with the next trunk call (run), or on `flush`.

        reencode=False (a draft's slides, sampling.draft): the context's keys and values already in the cache
        move to the window's start instead, each key turned to its new position, so positions and tokens are
        those of the re-encoding while a context token's deeper layers keep what they had seen before the slide
        (older frames). Re-encoding costs a trunk call over the whole context; a draft only sets where the
        full-precision solve starts, and that solve re-encodes. Learned positions sit in the hidden states, not
        in the keys: such blocks re-encode."""
        if reencode or self.pos is not None:
            self.cache.rewind(self.cache.pos - self.n_txt)
            inp = self.block.input_sequence(self.x_full[:, start + 1 - context:start + 1])[:, :-1]
            self.shift = start - inp.size(1)
            # encoded by the next trunk call, in front of its inputs (run): one call instead of two, the same
            # numbers (a 3-frame context and a 64-token frame of the bench video model: 109 -> 101 ms)
            self.context = (inp, start - inp.size(1))
            return
        self.flush()
        n = context - 1 + self.off          # the re-encoded context's length (with SOS: the SOS, then C - 1 tokens)
        first, shift = start - context + 1, start - n
        src, dst = self.n_txt + first - self.shift, self.n_txt + first - shift
        if first < self.shift + self.off or src + (start - first) > self.cache.pos:
            raise RuntimeError("a kept slide needs the cache to hold the context's entries")
        self.cache.move(src, dst, start - first, self._turn(src, dst, start - first))
        # with SOS, cache entry n_txt holds the SOS at position 0 already: every window writes it there
        self.shift = shift
        self.cache.pos = self.n_txt + n

    def _turn(self, src: int, dst: int, count: int):
        """Keys stored at cache rows [src, src + count) -> the same keys at rows [dst, dst + count) (RoPE: the
        rotation by the difference of the rows' angles); None without RoPE."""
        if self.rope is None:
            return None
        cos, sin = (t.float() for t in self.rope[:2])
        co, so, cn, sn = cos[src:src + count], sin[src:src + count], cos[dst:dst + count], sin[dst:dst + count]
        dc, ds = cn * co + sn * so, sn * co - cn * so             # cos and sin of (new angle - old angle)
        hf = self.block.hf_style_rope
        if hf:
            return lambda k: apply_rotary(k.float(), dc, ds, hf_style=True).to(k.dtype)
        # interleaved pairs: one complex product per layer, the same numbers in fewer passes (a draft's slide of the
        # bench video model, 8 layers: 5.5 -> 2.9 ms)
        cis = rotary_cis(dc, ds)
        return lambda k: apply_rotary_cis(k, cis)

    def solve(self, raw: torch.Tensor, p: int, guidance: float) -> torch.Tensor:
        """New values of x_full[p + 1 : p + 1 + len] from the head output at positions [p, p + len)."""
        scale, shift = self._maps(raw, p, guidance)
        j = p + 1 - self.off
        return inverse_affine(self.zp[:, j:j + raw.size(1)], scale, shift)

    def _maps(self, raw: torch.Tensor, p: int, guidance: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) of x_full[p + 1 : p + 1 + len] from the head output; a video's are kept for
        previous_frame_guess."""
        scale, shift = self.block.params(raw, guidance)
        if self.frames > 1:
            if self.maps is None:
                self.maps = torch.zeros((2,) + self.x_full.shape, dtype=scale.dtype, device=scale.device)
                self.mapped = torch.zeros(self.x_full.size(1), dtype=torch.bool)
            n = raw.size(1)
            self.maps[0, :, p + 1:p + 1 + n], self.maps[1, :, p + 1:p + 1 + n] = scale, shift
            self.mapped[p + 1:p + 1 + n] = True
        return scale, shift

    def previous_frame_guess(self, q: torch.Tensor) -> torch.Tensor:
        """A first value for the tokens x_full[q] of a video (q > frame_tokens): the affine map last computed for
        the same token one frame earlier, applied to the token's own noise, where that map is known; else that
        token's value. Neighbouring frames have similar maps (similar contexts) but independent noise: the map
        carries over, the value would not (bench video model, 8 frames: 29 -> 23 draft trunk calls, 56 -> 49 float32
        ones without a draft, the same error)."""
        prev = q - self.frame_tokens
        guess = self.x_full[:, prev]                 # a copy: indexing by a tensor gathers
        if self.maps is not None:
            known = self.mapped[prev]
            if bool(known.any()):
                qk, pk = q[known], prev[known]
                guess[:, known] = inverse_affine(self.zp[:, qk - self.off], self.maps[0, :, pk],
                                                 self.maps[1, :, pk]).to(guess.dtype)
        return guess

    def start_from(self, draft: "BlockInverse") -> None:
        """Take a draft's solution (the same inputs, solved by a copy of the block in another precision)
        as the first iterate of every unknown token. The samplers still accept each token by their own
        rule, evaluated in this block's precision: the draft only changes where the iteration starts."""
        if draft.x_full.shape != self.x_full.shape or draft.start != self.start:
            raise ValueError("a draft must solve the same inputs (shape and prefix) as the block it starts")
        s = self.start + 1
        self.x_full[:, s:] = draft.x_full[:, s:].to(self.x_full.dtype)
        self.initialised = True

    def result(self) -> torch.Tensor:
        x = self.x_full[:, self.off:]
        if self.guidance > 0:
            x = x.chunk(2)[0]
        return self.block.permute(x, self.frames)


def window_tokens(inv: BlockInverse, context_frames: int | None, window_frames: int | None
                   ) -> tuple[int | None, int]:
    """(window, context) in tokens for a sliding attention window, (None, 0) without one."""
    if not window_frames:
        return None, 0
    if context_frames is None or not 0 < context_frames < window_frames:
        raise ValueError(f"context_length must be between 1 and local_attn_window - 1 ({window_frames - 1})")
    return window_frames * inv.frame_tokens, context_frames * inv.frame_tokens


def first_target(inv: BlockInverse, W: int | None) -> int:
    """End (exclusive) of the input positions solved before the window first slides. Windows end on frame
    boundaries: input positions [0, target) make x_full[1 .. target], which holds the first W tokens behind a
    SOS embedding, or (no SOS: x_full[0] is the first token) the first W - 1 after it."""
    return inv.U if W is None else min(inv.U, W - 1 + inv.off)


def slide_window(inv: BlockInverse, at: int, target: int, W: int, C: int, reencode: bool = True) -> int:
    """The window is full at input position `at`: rebuild the cache from the text and the last C tokens; returns
    the end of the next window (the same rule for both samplers, so they solve the same equations)."""
    inv.slide(at, C, reencode)
    return min(target + W - C, inv.U)
