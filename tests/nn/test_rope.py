import math

import torch

from starflow.nn.rope import RotaryEmbedding, apply_rotary, positions


def test_positions_layout():
    pos = positions(2, 3, txt_len=4, pt_seq_len=4, frames=2)
    assert pos.shape == (4 + 2 * 6, 3)
    # text: rows and columns 0, third axis spread over [0, pt_seq_len)
    torch.testing.assert_close(pos[:4, 2], torch.arange(4) / 4 * 4.0)
    assert pos[:4, :2].abs().sum() == 0
    # frames: same grid twice, frame index on the third axis; grid scaled to pt_seq_len / sqrt(h w)
    torch.testing.assert_close(pos[4:10, :2], pos[10:16, :2])
    assert pos[4:10, 2].eq(0).all() and pos[10:16, 2].eq(1).all()
    torch.testing.assert_close(pos[4 + 3, 0], torch.tensor(4 / math.sqrt(6)))
    assert positions(4, 4, mode="2d").shape == (16, 2)


def test_rotation_preserves_norm_and_is_relative():
    rope = RotaryEmbedding(head_dim=24, pt_seq_len=4, txt_size=3)
    cos, sin = rope.tables(4, 4, 3, 0)
    assert cos.shape == (19, 24)
    q = torch.randn(1, 1, 19, 24, dtype=torch.float64)
    qr = apply_rotary(q, cos.double(), sin.double())
    torch.testing.assert_close(qr.norm(dim=-1), q.norm(dim=-1))
    # same vector at two positions: the score depends on the positions only through their difference
    v = torch.randn(24, dtype=torch.float64)
    tok = v.expand(1, 1, 19, 24)
    r = apply_rotary(tok, cos.double(), sin.double())[0, 0]
    # text positions 0..2 differ by the same step on the text axis: equal neighbouring scores
    torch.testing.assert_close(r[0] @ r[1], r[1] @ r[2])


def test_hf_style_is_interleaved_on_reordered_channels():
    cos, sin = RotaryEmbedding(head_dim=16, pt_seq_len=4, txt_size=0).tables(4, 4, 0, 0)
    x = torch.randn(2, 16, 16, dtype=torch.float64)
    perm = torch.arange(16).view(2, 8).t().reshape(-1)          # (u d) -> (d u)
    hf = apply_rotary(x, cos.double(), sin.double(), hf_style=True)
    inter = apply_rotary(x[..., perm], cos.double(), sin.double())
    torch.testing.assert_close(hf[..., perm], inter)
