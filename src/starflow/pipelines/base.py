"""What the image and video pipelines share: components, persistence, prompt encoding, denoising, sizes."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from ..config import ModelConfig
from ..flow.model import StarFlow
from ..sampling.options import SamplerOptions
from .offload import OffloadMixin
from .components import load_autoencoder_spec, load_text_encoder_spec, spec_of
from .loading import official_parts, read_pipeline_folder, save_pipeline
from ..data.buckets import aspect_ratio_to_image_size
from .spec import ASPECT_RATIOS, PipelineDefaults, PipelineSpec, read_spec

__all__ = ["BasePipeline", "PipelineKindError", "load_text_encoder_spec", "load_autoencoder_spec"]


class PipelineKindError(ValueError):
    """A video model given to the image pipeline or the other way round (the command line names its command)."""

    def __init__(self, where: str, kind: str):
        self.where, self.kind = where, kind
        what, cls = ("a video", "StarFlowVideoPipeline") if kind == "video" else ("an image", "StarFlowPipeline")
        super().__init__(f"{where} holds {what} model: use {cls} (or load_pipeline, which picks the class by kind)")


class BasePipeline(OffloadMixin):
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
            name = self.text_encoder_spec or type(text_encoder).__name__
            if int(text_encoder.dim) != c.txt_dim:
                raise ValueError(f"text encoder {name} gives {text_encoder.dim}-dim embeddings; the model expects "
                                 f"{c.txt_dim}-dim ones (txt_dim): give the text encoder it was trained with")
            length = getattr(text_encoder, "length", None)
            if length is not None and c.txt_size and int(length) != c.txt_size:
                raise ValueError(f"text encoder {name} gives {length} tokens; the model reads txt_size={c.txt_size}")
        lc = self.latent_channels
        if lc != c.channel_size:
            raise ValueError(f"autoencoder {self.autoencoder_spec or type(autoencoder).__name__} gives latents of {lc} "
                             f"channels; the model takes channel_size={c.channel_size}")
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
        """Move every component to `device`; `dtype` applies to the flow's weights. Ends a CPU offload
        (enable_cpu_offload): everything is then on one device."""
        self._offload_device = None
        self.flow.to(device=device, dtype=dtype)
        for comp in (self.text_encoder, self.autoencoder):
            if comp is not None and hasattr(comp, "to"):
                comp.to(device)
        return self

    # ---- persistence (folder formats in pipelines.loading) ---------------------------------------------
    @property
    def spec(self) -> PipelineSpec:
        return PipelineSpec(kind=self.kind, text_encoder=self.text_encoder_spec, autoencoder=self.autoencoder_spec,
                            defaults=self.defaults, spatial_factor=self.spatial_factor)

    def save_pretrained(self, directory: str | Path, copy_components: bool = False) -> Path:
        """Write a pipeline folder: `pipeline.json` + the flow as a model folder `flow/`. Text encoder and
        autoencoder are written as their specs; with copy_components, a spec naming a local folder has that
        folder copied in and referenced as `./name`."""
        return save_pipeline(self, directory, copy_components)

    @classmethod
    def _check_kind(cls, kind: str, where: str) -> None:
        if cls is not BasePipeline and kind != cls.kind:
            raise PipelineKindError(where, kind)

    @classmethod
    def _class_for(cls, kind: str):
        if cls is not BasePipeline:
            return cls
        from .image import StarFlowPipeline
        from .video import StarFlowVideoPipeline
        return StarFlowVideoPipeline if kind == "video" else StarFlowPipeline

    @classmethod
    def _assemble(cls, spec: PipelineSpec, flow: StarFlow, text_encoder, autoencoder, root: Path | None, device,
                  input_transform=None, training_info=None, dtype: torch.dtype | None = None):
        c = flow.config
        if text_encoder is None and c.txt_dim > 0:
            text_encoder = load_text_encoder_spec(spec.text_encoder, c.txt_size, root, dtype=dtype)
        if autoencoder is None:
            autoencoder = load_autoencoder_spec(spec.autoencoder, root, dtype=dtype)
        factor = int(getattr(autoencoder, "spatial_factor", 1)) if autoencoder is not None else 1
        if spec.spatial_factor is not None and factor != spec.spatial_factor:
            name = spec_of(autoencoder) or spec.autoencoder or "identity (pixels)"
            raise ValueError(f"autoencoder {name} has spatial factor {factor}, but the model was trained behind one of "
                             f"factor {spec.spatial_factor}: its latent grid would not be the trained one; give an "
                             f"autoencoder of factor {spec.spatial_factor}")
        pipe = cls._class_for(spec.kind)(flow, text_encoder, autoencoder, defaults=spec.defaults,
                                         text_encoder_spec=spec.text_encoder, autoencoder_spec=spec.autoencoder,
                                         input_transform=input_transform, training_info=training_info)
        return pipe.to(device) if device is not None else pipe

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, text_encoder: Any = None, autoencoder: Any = None,
                        text_encoder_spec: str | None = None, autoencoder_spec: str | None = None,
                        device: str | torch.device | None = None, torch_dtype: torch.dtype | None = None):
        """Load a pipeline folder (strict weights): save_pretrained's, `starflow convert`'s, or the final/ folder
        of `starflow train`. Components (objects, or specs such as a local 't5:/models/flan-t5-xl') given here
        replace the stored ones. torch_dtype (e.g. torch.bfloat16; default float32): the weights' dtype, of the
        flow and of the components loaded from specs; the flow is read tensor by tensor straight into it."""
        pipeline_file = Path(directory) / "pipeline.json"
        if pipeline_file.is_file():       # the kind first: no weights are read for the wrong pipeline
            cls._check_kind(read_spec(pipeline_file).kind, str(directory))
        spec, flow, transform, training = read_pipeline_folder(directory, dtype=torch_dtype, device=device)
        cls._check_kind(spec.kind, str(directory))
        spec.text_encoder = text_encoder_spec or spec_of(text_encoder) or spec.text_encoder
        spec.autoencoder = autoencoder_spec or spec_of(autoencoder) or spec.autoencoder
        return cls._assemble(spec, flow, text_encoder, autoencoder, Path(directory), device, transform, training,
                             dtype=torch_dtype)

    @classmethod
    def from_trained(cls, directory: str | Path, *, device=None):
        """The model a `starflow train` run exported (its final/ folder), with the components and noise level
        it was trained with: the same as from_pretrained, kept for scripts that call it."""
        return cls.from_pretrained(directory, device=device)

    @classmethod
    def from_config(cls, config: str | Path | PipelineSpec, *, text_encoder: Any = None, autoencoder: Any = None,
                    device=None, seed: int = 0, torch_dtype: torch.dtype | None = None):
        """A pipeline with freshly initialised flow weights, from our YAML config (or a PipelineSpec)."""
        spec = config if isinstance(config, PipelineSpec) else read_spec(config)
        cls._check_kind(spec.kind, str(config))
        torch.manual_seed(seed)
        flow = StarFlow(spec.model_config()).to(dtype=torch_dtype)
        return cls._assemble(spec, flow, text_encoder, autoencoder, None, device, dtype=torch_dtype)

    @classmethod
    def from_official(cls, config: str | Path | dict, checkpoint: str | Path | dict | None, *,
                      text_encoder: Any = None, autoencoder: Any = None, text_encoder_spec: str | None = None,
                      autoencoder_spec: str | None = None, device=None, torch_dtype: torch.dtype | None = None):
        """Official YAML (`arguments:` list) + official `.pth` / `.safetensors` state dict -> pipeline (strict).

        `config` may also be one of our configs (configs/starflow_3b_t2i_256.yaml...), which carry the
        official values. Text encoder / autoencoder: objects, or specs replacing the official names
        (e.g. a local 't5:/models/flan-t5-xl'), or, by default, the official names mapped to our specs.
        torch_dtype as in from_pretrained: torch.bfloat16 is the official sampler's weight precision, and the
        checkpoint is read tensor by tensor into it (peak memory about one model in that dtype).
        Defaults (guidance, Jacobi settings, aspect ratio, context length): the official sampling scripts'."""
        spec, flow, text_encoder, autoencoder = official_parts(
            config, checkpoint, text_encoder_spec=text_encoder_spec, autoencoder_spec=autoencoder_spec,
            text_encoder=text_encoder, autoencoder=autoencoder, torch_dtype=torch_dtype, device=device,
            check_kind=cls._check_kind)
        return cls._assemble(spec, flow, text_encoder, autoencoder, None, device, dtype=torch_dtype)

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
        neg = None
        if guidance > 0 and negative is not None:
            neg = [negative] * len(prompts) if isinstance(negative, str) else list(negative)
            if len(neg) != len(prompts):
                raise ValueError(f"{len(neg)} negative prompts for {len(prompts)} prompts")
        y_null = None
        with self._use(self.text_encoder) as enc:
            y = enc.encode(prompts, **cond)
            if guidance > 0:
                y_null = enc.null(len(prompts), **cond) if neg is None else enc.encode(neg, **cond)
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
        aspect_ratio, H, W = self._size(height, width, aspect_ratio)
        return opts, denoise, aspect_ratio, H, W

    def _run_batches(self, z: torch.Tensor, y, y_null, opts: SamplerOptions, *, batch_size: int | None,
                     progress: bool, output_type: str, denoise, prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Noise -> flow inverse -> denoising step -> decoding, `batch_size` items at a time: what every
        generation call runs. `denoise(x, y)` is the call's denoising step."""
        from ..sampling.sample import sample

        n = z.size(0)
        if batch_size is not None and batch_size < 1:    # 0 is an error, not "all" (None is)
            raise ValueError(f"batch_size must be >= 1 (or None: all at once), got {batch_size}")
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

    def _denoise(self, x: torch.Tensor, y: torch.Tensor | None, method: str, precision: str = "model") -> torch.Tensor:
        """One denoising step on latents x (images, or video chunks the caller cut); precision: the learned
        denoiser's (SamplerOptions.denoiser_precision)."""
        from ..sampling.denoise import learned_denoise, score_denoise

        s = self.defaults.noise_std
        if method == "none" or s <= 0:
            return x
        if method == "score":
            return score_denoise(self.flow, x, y, s)
        return learned_denoise(self.flow, x, y, s, precision=precision)

    def _size(self, height: int | None, width: int | None, aspect_ratio: str | None
              ) -> tuple[str | None, int, int]:
        """-> (the aspect ratio the prompt template names, H, W in pixels), following the training settings.

        The model was trained on `defaults.aspect_ratios` (None: not recorded, any size) at the area of its
        square: an aspect ratio gives that size, height / width must be one of those sizes, and anything else is
        refused rather than sampled at a size the model never saw. A model trained with the aspect ratio in its
        prompts (mix_aspect) always gets one: the asked one, the default one, or "1:1" (the official sampler's)."""
        d = self.defaults
        multiple = self.spatial_factor * self.config.patch_size
        side = self.config.img_size * self.spatial_factor
        trained = d.aspect_ratios
        choices = trained or list(ASPECT_RATIOS)
        if height is not None or width is not None:
            if aspect_ratio is not None:
                raise ValueError("give either height/width or aspect_ratio, not both")
            height = side if height is None else height       # 0 is an error below, not the default
            width = side if width is None else width
            for name, v in (("height", height), ("width", width)):
                if v <= 0 or v % multiple:
                    raise ValueError(f"{name} {v} must be a positive multiple of {multiple} "
                                     f"(autoencoder factor {self.spatial_factor} x patch size {self.config.patch_size})")
            matches = [r for r in choices if self._ratio_size(side, r, multiple) == (height, width)]
            if not matches and (trained is not None or d.mix_aspect):
                raise ValueError(f"{height}x{width} is not a size this model was trained on; it makes "
                                 f"{self._sizes_text(side, choices, multiple)} (choose an aspect ratio)")
            if len(matches) > 1 and d.mix_aspect:     # small models: ratios can round to the same size
                raise ValueError(f"{height}x{width} is the size of the aspect ratios {', '.join(matches)}, which the "
                                 f"prompt tells apart: give the aspect ratio instead")
            return (matches[0] if d.mix_aspect else None), int(height), int(width)
        ratio = aspect_ratio if aspect_ratio is not None else d.aspect_ratio
        if ratio is None and d.mix_aspect:
            ratio = "1:1"
        if ratio is not None and ratio not in choices:
            if ratio not in ASPECT_RATIOS:
                raise ValueError(f"unknown aspect ratio {ratio!r}; choose one of {', '.join(choices)}")
            raise ValueError(f"aspect ratio {ratio}: this model was trained on "
                             f"{self._sizes_text(side, choices, multiple)} only, so it cannot make {ratio}")
        H, W = self._ratio_size(side, ratio, multiple)
        return ratio, H, W

    @staticmethod
    def _ratio_size(side: int, ratio: str | None, multiple: int) -> tuple[int, int]:
        return aspect_ratio_to_image_size(side, ratio, multiple)     # the official rule (height, width)

    def _sizes_text(self, side: int, ratios: list[str], multiple: int) -> str:
        """'256x256 pictures' for a single size, else '1:1 (640x640), 16:9 (480x848), ...' (height x width)."""
        sizes = [(r, *self._ratio_size(side, r, multiple)) for r in ratios]
        if len(sizes) == 1:
            return f"{sizes[0][1]}x{sizes[0][2]} (height x width) pictures"
        return ", ".join(f"{r} ({h}x{w})" for r, h, w in sizes)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.input_transform is not None:
            z = self.input_transform.inverse(z)
        if self.autoencoder is None:
            return z
        with torch.no_grad(), self._use(self.autoencoder) as ae:
            return ae.decode(z)

    @staticmethod
    def _check_output_type(output_type: str) -> None:
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', not {output_type!r}")
