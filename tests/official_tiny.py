"""Scaled-down copies of the two official configurations (tests/assets/official/*.yaml: the official files' keys,
small sizes) and checkpoints for them, written as the official ones are: a `.pth` of the model's parameters
plus the unused buffers official checkpoints carry. Also tiny random components of the official kinds
(flan-T5 stand-in of width 32, an 8x SD-VAE, a 16x Wan2.2 VAE), saved to disk and loaded by spec."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence

import torch

from starflow import ModelConfig, StarFlow
from starflow.conditioning import TextEncoder, apply_templates

ASSETS = Path(__file__).parent / "assets" / "official"
TXT_DIM = 32

# each official file, the name the official release gives its checkpoint, and the model it describes (latent units)
OFFICIAL = {
    "image": ("starflow_3B_t2i_256x256.yaml", "starflow_3B_t2i_256x256.pth", dict(
        channel_size=4, img_size=4, channels=64, blocks=3, layers_per_block=[1, 1, 2], head_dim=64, rope=True,
        sos=True, txt_size=4, txt_dim=TXT_DIM, cond_top_only=True, use_softplus=True, use_final_norm=True,
        soft_clip=4.0, seq_order="L2R")),
    "video": ("starflow-v_7B_t2v_caus_480p.yaml", "starflow-v_7B_t2v_caus_480p_v3.pth", dict(
        channel_size=4, img_size=4, channels=64, top_block_channels=128, blocks=3, layers_per_block=[1, 1, 2],
        head_dim=64, rope=True, pt_seq_len=4, sos=True, txt_size=4, txt_dim=TXT_DIM, cond_top_only=True,
        use_softplus=True, use_final_norm=True, soft_clip=4.0, seq_order="L2R", learnable_self_denoiser=True,
        conditional_denoiser=True, denoiser_window=10, temporal_causal=2, shallow_block_local=True)),
}


def official_model(kind: str, seed: int = 0) -> StarFlow:
    """The flow the scaled-down official file describes, with random weights (zero-initialised heads too)."""
    torch.manual_seed(seed)
    model = StarFlow(ModelConfig.from_dict(OFFICIAL[kind][2]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def write_official(kind: str, folder: Path, seed: int = 0) -> tuple[Path, Path, StarFlow]:
    """configs/<official name>.yaml + <official checkpoint name>.pth in `folder` -> (yaml, pth, the model)."""
    yaml_name, ckpt_name, _ = OFFICIAL[kind]
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    cfg = folder / "configs" / yaml_name
    shutil.copy(ASSETS / yaml_name, cfg)
    model = official_model(kind, seed)
    sd = dict(model.state_dict())
    sd["var"] = torch.ones(1)                               # official checkpoints carry these unused buffers
    sd["blocks.0.attn_mask"] = torch.ones(4, 4)
    torch.save(sd, folder / ckpt_name)
    return cfg, folder / ckpt_name, model


def tiny_t5(folder: Path, width: int = TXT_DIM) -> Path:
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    torch.manual_seed(0)
    T5EncoderModel(T5Config(vocab_size=384, d_model=width, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
                   ).save_pretrained(folder)
    ByT5Tokenizer().save_pretrained(folder)          # byte-level: needs no vocabulary file
    return folder


def tiny_sd_vae(folder: Path, levels: int = 4) -> Path:
    """AutoencoderKL with `levels` resolutions: spatial factor 2 ** (levels - 1) (4: the SD-VAE's 8), 4 channels."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
                  up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=(8,) * levels,
                  layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=32).save_pretrained(folder)
    return folder


def tiny_wan(folder: Path) -> Path:
    """AutoencoderKLWan with patch 2 and four levels: the Wan2.2 VAE's 16x spatial, 4x causal temporal; 4 channels."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    AutoencoderKLWan(base_dim=4, decoder_base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                     temperal_downsample=[False, True, True], patch_size=2, in_channels=12, out_channels=12,
                     latents_mean=[0.0] * 4, latents_std=[1.0] * 4, is_residual=True,
                     scale_factor_spatial=16).save_pretrained(folder / "vae")   # laid out as the hub repository
    return folder


class RecordingEncoder(TextEncoder):
    """A text encoder that keeps every text it is given (after the prompt templates) and returns a fixed random
    embedding per text: what the model is conditioned on, readable in tests."""

    spec = "recording"

    def __init__(self, dim: int = TXT_DIM, length: int = 4):
        super().__init__(dim, length)
        self.texts: list[str] = []

    def encode(self, prompts: Sequence[str], *, fps: Any = None, noise_std: Any = None,
               aspect_ratio: Any = None) -> torch.Tensor:
        texts = apply_templates(list(prompts), fps=fps, noise_std=noise_std, aspect_ratio=aspect_ratio)
        self.texts.extend(texts)
        rows = [torch.randn(self.length, self.dim, generator=torch.Generator().manual_seed(sum(map(ord, t)) + len(t)))
                for t in texts]
        return torch.stack(rows)
