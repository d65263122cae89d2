"""What the image and video pipelines share: components, persistence, prompt encoding, denoising, sizes."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from ..config import ModelConfig
from ..flow.model import StarFlow
from ..sampling.options import SamplerOptions
from .components import load_autoencoder_spec, load_text_encoder_spec, spec_of
from .loading import official_parts, read_pipeline_folder, save_pipeline
from .spec import PipelineDefaults, PipelineSpec, aspect_ratio_to_size, read_spec

__all__ = ["BasePipeline", "load_text_encoder_spec", "load_autoencoder_spec"]


class BasePipeline:
    """flow + text encoder + autoencoder, with the defaults the flow was trained for."""

    kind = "image"

    def __init__(self, flow: StarFlow, text_encoder: Any = None, autoencoder: Any = None, *,
                 defaults: PipelineDefaults | dict | None = None, text_encoder_spec: str | None = None,
                 autoencoder_spec: str | None = None, input_transform=None, training_info: dict | None = None):
        c = flow.config
        self.flow = flow.eval()
        # how the flow was trained (training.json of a `starflow train` export), as plain data; None otherwise
        self.training_info = training_info
        # a likelihood model trained on t = T(x) (flow.transforms): samples go through T's inverse
        self.input_transform = input_transform
        self.text_encoder = text_encoder
        self.autoencoder = autoencoder
        self.defaults = defaults if isinstance(defaults, PipelineDefaults) else PipelineDefaults.from_dict(defaults)
        self.text_encoder_spec = text_encoder_spec or spec_of(text_encoder)
        self.autoencoder_spec = autoencoder_spec or spec_of(autoencoder)
        if c.txt_dim > 0:
            if text_encoder is None:
                raise ValueError(f"this flow reads text (txt_dim={c.txt_dim}): a text encoder is required")
            if int(text_encoder.dim) != c.txt_dim:
                raise ValueError(f"text encoder gives {text_encoder.dim}-dim embeddings; the flow reads txt_dim={c.txt_dim}")
            length = getattr(text_encoder, "length", None)
            if length is not None and c.txt_size and int(length) != c.txt_size:
                raise ValueError(f"text encoder gives {length} tokens; the flow reads txt_size={c.txt_size}")
        lc = self.latent_channels
        if lc != c.channel_size:
            raise ValueError(f"autoencoder latents have {lc} channels; the flow takes channel_size={c.channel_size}")
        if self.defaults.denoise == "learned" and not c.learnable_self_denoiser:
            raise ValueError("defaults.denoise='learned' needs a flow with learnable_self_denoiser")

    # ---- components ---------------------------------------------------------------------------------
    @property
    def config(self) -> ModelConfig:
        return self.flow.config

    @property
    def device(self) -> torch.device:
        return next(self.flow.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.flow.parameters()).dtype

    @property
    def spatial_factor(self) -> int:
        return int(getattr(self.autoencoder, "spatial_factor", 1)) if self.autoencoder is not None else 1

    @property
    def temporal_factor(self) -> int:
        return int(getattr(self.autoencoder, "temporal_factor", 1)) if self.autoencoder is not None else 1

    @property
    def latent_channels(self) -> int:
        lc = getattr(self.autoencoder, "latent_channels", None) if self.autoencoder is not None else None
        return self.config.channel_size if lc is None else int(lc)   # None: latents are the pixels

    @property
    def pixel_channels(self) -> int:
        """Channels of the pictures: the autoencoder's input, or the flow's own when it models pixels."""
        ae = self.autoencoder
        for name in ("pixel_channels", "in_channels", "image_channels"):
            if ae is not None and getattr(ae, name, None):
                return int(getattr(ae, name))
        return self.config.channel_size if self.spatial_factor == 1 else 3

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "BasePipeline":
        self.flow.to(device=device, dtype=dtype)
        for comp in (self.text_encoder, self.autoencoder):
            if comp is not None and hasattr(comp, "to"):
                comp.to(device)
        return self

    # ---- persistence (folder formats in pipelines.loading) ---------------------------------------------
    @property
    def spec(self) -> PipelineSpec:
        return PipelineSpec(kind=self.kind, text_encoder=self.text_encoder_spec, autoencoder=self.autoencoder_spec,
                            defaults=self.defaults)

    def save_pretrained(self, directory: str | Path, copy_components: bool = False) -> Path:
        """Write a pipeline folder: `pipeline.json` + the flow as a model folder `flow/`. Text encoder and
        autoencoder are written as their specs; with copy_components, a spec naming a local folder has that
        folder copied in and referenced as `./name`."""
        return save_pipeline(self, directory, copy_components)

    @classmethod
    def _check_kind(cls, kind: str, where: str) -> None:
        if cls is not BasePipeline and kind != cls.kind:
            hint = "generate-video / StarFlowVideoPipeline" if kind == "video" else "generate / StarFlowPipeline"
            raise ValueError(f"{where} holds a {kind} model: use {hint}")

    @classmethod
    def _class_for(cls, kind: str):
        if cls is not BasePipeline:
            return cls
        from .image import StarFlowPipeline
        from .video import StarFlowVideoPipeline
        return StarFlowVideoPipeline if kind == "video" else StarFlowPipeline

    @classmethod
    def _assemble(cls, spec: PipelineSpec, flow: StarFlow, text_encoder, autoencoder, root: Path | None, device,
                  input_transform=None, training_info=None):
        c = flow.config
        if text_encoder is None and c.txt_dim > 0:
            text_encoder = load_text_encoder_spec(spec.text_encoder, c.txt_size, root)
        if autoencoder is None:
            autoencoder = load_autoencoder_spec(spec.autoencoder, root)
        pipe = cls._class_for(spec.kind)(flow, text_encoder, autoencoder, defaults=spec.defaults,
                                         text_encoder_spec=spec.text_encoder, autoencoder_spec=spec.autoencoder,
                                         input_transform=input_transform, training_info=training_info)
        return pipe.to(device) if device is not None else pipe

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, text_encoder: Any = None, autoencoder: Any = None,
                        text_encoder_spec: str | None = None, autoencoder_spec: str | None = None,
                        device: str | torch.device | None = None):
        """Load a pipeline folder (strict weights): save_pretrained's, `starflow convert`'s, or the final/ folder
        of `starflow train`. Components (objects, or specs such as a local 't5:/models/flan-t5-xl') given here
        replace the stored ones."""
        spec, flow, transform, training = read_pipeline_folder(directory)
        cls._check_kind(spec.kind, str(directory))
        spec.text_encoder = text_encoder_spec or spec_of(text_encoder) or spec.text_encoder
        spec.autoencoder = autoencoder_spec or spec_of(autoencoder) or spec.autoencoder
        return cls._assemble(spec, flow, text_encoder, autoencoder, Path(directory), device, transform, training)

    @classmethod
    def from_trained(cls, directory: str | Path, *, device=None):
        """The model a `starflow train` run exported (its final/ folder), with the components and noise level
        it was trained with: the same as from_pretrained, kept for scripts that call it."""
        return cls.from_pretrained(directory, device=device)

    @classmethod
    def from_config(cls, config: str | Path | PipelineSpec, *, text_encoder: Any = None, autoencoder: Any = None,
                    device=None, seed: int = 0):
        """A pipeline with freshly initialised flow weights, from our YAML config (or a PipelineSpec)."""
        spec = config if isinstance(config, PipelineSpec) else read_spec(config)
        cls._check_kind(spec.kind, str(config))
        torch.manual_seed(seed)
        return cls._assemble(spec, StarFlow(spec.model_config()), text_encoder, autoencoder, None, device)

    @classmethod
    def from_official(cls, config: str | Path | dict, checkpoint: str | Path | dict | None, *,
                      text_encoder: Any = None, autoencoder: Any = None, text_encoder_spec: str | None = None,
                      autoencoder_spec: str | None = None, device=None):
        """Official YAML (`arguments:` list) + official `.pth` state dict -> pipeline (strict loading).

        `config` may also be one of our configs (configs/starflow_3b_t2i_256.yaml...), which carry the
        official values. Text encoder / autoencoder: objects, or specs replacing the official names
        (e.g. a local 't5:/models/flan-t5-xl'), or, by default, the official names mapped to our specs."""
        spec, flow, text_encoder, autoencoder = official_parts(
            config, checkpoint, text_encoder_spec=text_encoder_spec, autoencoder_spec=autoencoder_spec,
            text_encoder=text_encoder, autoencoder=autoencoder)
        cls._check_kind(spec.kind, str(config) if not isinstance(config, dict) else "official config")
        return cls._assemble(spec, flow, text_encoder, autoencoder, None, device)

    # ---- shared call helpers ------------------------------------------------------------------------
    @staticmethod
    def _prompts(prompt: str | Sequence[str] | None, conditioned: bool) -> list[str] | None:
        if prompt is None:
            if conditioned:
                raise ValueError("this model is text conditioned: give a prompt or a list of prompts")
            return None
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("the prompt list is empty: give at least one prompt")
        if not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be strings")
        return prompts

    @staticmethod
    def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
        """Noise is always drawn on the CPU so that a seed gives the same samples on any device."""
        if generator is not None:
            if generator.device.type != "cpu":
                raise ValueError("pass a CPU torch.Generator: noise is drawn on the CPU for reproducibility")
            return generator
        g = torch.Generator()
        if seed is not None:
            g.manual_seed(int(seed))
        else:
            g.seed()
        return g

    def _cond_kwargs(self, fps: int | None, aspect_ratio: str | None) -> dict[str, Any]:
        """The prompt template fields the flow was trained with (official fps_cond / cond_noise_level / mix_aspect)."""
        d = self.defaults
        return dict(fps=fps if d.fps_cond else None, noise_std=d.noise_std if d.cond_noise_level else None,
                    aspect_ratio=aspect_ratio if d.mix_aspect else None)

    def _encode(self, prompts: list[str] | None, negative: str | Sequence[str] | None, repeat: int,
                guidance: float, cond: dict[str, Any]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """-> y, y_null: (N, txt_size, txt_dim), each prompt repeated `repeat` times; y_null only with guidance."""
        if prompts is None or self.config.txt_dim == 0:
            return None, None
        enc = self.text_encoder
        y = enc.encode(prompts, **cond)
        y_null = None
        if guidance > 0:
            if negative is None:
                y_null = enc.null(len(prompts), **cond)
            else:
                neg = [negative] * len(prompts) if isinstance(negative, str) else list(negative)
                if len(neg) != len(prompts):
                    raise ValueError(f"{len(neg)} negative prompts for {len(prompts)} prompts")
                y_null = enc.encode(neg, **cond)
        dev, dt = self.device, self.dtype
        y = y.to(dev, dt).repeat_interleave(repeat, 0)
        if y_null is not None:
            y_null = y_null.to(dev, dt).repeat_interleave(repeat, 0)
        return y, y_null

    def _call_setup(self, options: SamplerOptions | None, sampling: dict[str, Any], denoise: str | None,
                    height: int | None, width: int | None, aspect_ratio: str | None
                    ) -> tuple[SamplerOptions, str, str | None, int, int]:
        """What every generation call shares, checked and defaulted: the sampler settings (the pipeline's
        defaults, or `options`, with the call's keyword arguments on top: SamplerOptions field names),
        the denoising step, and the size -> (options, denoise, aspect_ratio, H, W in pixels)."""
        opts = (options or self.defaults.sampling).with_(**sampling)
        denoise = denoise if denoise is not None else self.defaults.denoise
        if denoise not in ("score", "learned", "none"):
            raise ValueError(f"denoise must be 'score', 'learned' or 'none', not {denoise!r}")
        if denoise == "learned" and self.flow.learnable_self_denoiser is None:
            raise ValueError("denoise='learned' needs a flow with a learnable self-denoiser; use 'score' or 'none'")
        aspect_ratio = aspect_ratio if aspect_ratio is not None or height or width else self.defaults.aspect_ratio
        H, W = self._pixel_size(height, width, aspect_ratio)
        return opts, denoise, aspect_ratio, H, W

    def _run_batches(self, z: torch.Tensor, y, y_null, opts: SamplerOptions, *, batch_size: int | None,
                     progress: bool, output_type: str, denoise, prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Noise -> flow inverse -> denoising step -> decoding, `batch_size` items at a time: what every
        generation call runs. `denoise(x, y)` is the call's denoising step."""
        from ..sampling.sample import sample

        n = z.size(0)
        bs = batch_size or n
        starts = range(0, n, bs)
        opts = opts.with_(progress=progress and len(starts) == 1)
        outs = []
        for s in tqdm(starts, desc="sampling", disable=not progress or len(starts) == 1):
            sl = slice(s, s + bs)
            yb = y[sl] if y is not None else None
            x = sample(self.flow, z[sl], yb, y_null[sl] if y_null is not None else None, opts,
                       prefix=prefix[sl] if prefix is not None else None)
            x = denoise(x, yb)
            outs.append(x if output_type == "latent" else self._decode(x))
        return torch.cat(outs)

    def _denoise(self, x: torch.Tensor, y: torch.Tensor | None, method: str) -> torch.Tensor:
        """One denoising step on latents x (images, or video chunks the caller cut)."""
        from ..sampling.denoise import learned_denoise, score_denoise

        s = self.defaults.noise_std
        if method == "none" or s <= 0:
            return x
        if method == "score":
            return score_denoise(self.flow, x, y, s)
        return learned_denoise(self.flow, x, y, s)

    def _pixel_size(self, height: int | None, width: int | None, aspect_ratio: str | None) -> tuple[int, int]:
        """Output (H, W) in pixels: explicit, from an aspect ratio (same area as training), or the trained square."""
        multiple = self.spatial_factor * self.config.patch_size
        if height is not None or width is not None:
            if aspect_ratio is not None:
                raise ValueError("give either height/width or aspect_ratio, not both")
            target = self.config.img_size * self.spatial_factor
            height, width = height or target, width or target
            for name, v in (("height", height), ("width", width)):
                if v <= 0 or v % multiple:
                    raise ValueError(f"{name} {v} must be a positive multiple of {multiple} "
                                     f"(autoencoder factor {self.spatial_factor} x patch size {self.config.patch_size})")
            return int(height), int(width)
        return aspect_ratio_to_size(self.config.img_size * self.spatial_factor, aspect_ratio, multiple)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.input_transform is not None:
            z = self.input_transform.inverse(z)
        if self.autoencoder is None:
            return z
        with torch.no_grad():
            return self.autoencoder.decode(z)

    @staticmethod
    def _check_output_type(output_type: str) -> None:
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', not {output_type!r}")
