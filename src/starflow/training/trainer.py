"""What a training run is made of, and its steps: official NLL objective, AdamW + cosine schedule,
accumulation, clipping, skipping, EMA, the learnable denoiser on the flow's own score, checkpoints,
held-out bits/dim, sample grids and the exported pipeline. The loop itself (training.loop.train) is a
plain function that owns the run's progress and calls these pieces.

    from starflow.training import load_train_config, train
    result = train(load_train_config("configs/digits_class_cond.yaml", ["optim.max_steps=200"]))
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .._cpu import adapt_threads, pin_threads
from ..config import ConfigError
from ..data import BatchSampler
from ..flow.likelihood import nll_from_terms
from ..flow.model import StarFlow
from ..sampling.sample import NonFiniteSampleWarning
from .checkpoint import TRAINING_FILE, CheckpointManager, MetricsLog, strip_prefix
from .config import TrainConfig
from .distributed import DistContext, full_model_state, full_optim_state, no_sync, to_local_scalar, wrap_model
from .ema import EMA
from .evaluate import heldout_bpd, sample_grid
from .inputs import (Conditioner, InputPipeline, build_datasets, build_transform, load_autoencoder_for,
                     resolve_model_config, step_generator)
from .objective import TrainModule, add_dropout, denoiser_target

__all__ = ["TrainResult", "TrainModule", "Trainer", "Progress", "denoiser_target", "NonFiniteWeightsError"]


class NonFiniteWeightsError(RuntimeError):
    """Training stopped: the weights became NaN or infinite, or the loss stayed non-finite (the model diverged).
    Nothing was saved after the last good checkpoint."""


@dataclass
class Progress:
    """Where a run is: the loop owns it, checkpoints save it, a resume restores it."""
    step: int = 0
    elapsed: float = 0.0                 # training-loop wall time (evaluation excluded)
    skipped: int = 0                     # optimiser steps skipped (non-finite or too large gradients)
    samples: int = 0


@dataclass
class TrainResult:
    checkpoint_dir: Path                 # the exported model (config.json + model.safetensors): load_trained()
    steps: int
    test_bpd: float | None               # held-out bits/dim (likelihood protocol), when the data has a split
    model: StarFlow | None               # trained model (EMA weights if enabled); None on ranks other than 0
    metrics: list[dict] = field(default_factory=list)
    run_dir: Path | None = None
    seconds: float = 0.0                 # training-loop wall time (evaluation excluded)
    skipped_steps: int = 0


class Trainer:
    """The model, its optimisers, data and conditioning of one run; the loop (training.loop) drives it."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext):
        self.cfg, self.ctx = cfg, ctx
        o, d = cfg.optim, cfg.data
        if o.num_threads:                      # a fixed count; else the loop fits it to the free cores (_cpu.py)
            pin_threads(o.num_threads)
        # the setup below (encoder, text of the dataset, the precision probe) is seconds of work too: fitted to the
        # free cores from here on, not only from the first step (on a busy 2-core host it took 2x as long unfitted)
        adapt_threads()
        if o.batch_size % (o.grad_accum * ctx.world):
            raise ConfigError(f"optim.batch_size {o.batch_size} must divide into grad_accum {o.grad_accum} x "
                              f"{ctx.world} processes")
        self.out = Path(cfg.log.out_dir)
        dev = ctx.device
        self.ae = load_autoencoder_for(d, dev)
        patch = int(cfg.model.get("patch_size", 1))
        self.train_set, self.held_set, self.val_set = build_datasets(
            d, (self.ae.spatial_factor if self.ae else 1) * patch)
        self.cond = Conditioner(d.condition, d.text_encoder, d.txt_size, self.train_set, dev)
        self.item_shape = tuple(self.train_set.item_shape())
        self.model_cfg = resolve_model_config(cfg, self.item_shape, self.cond, self.ae)
        if self.model_cfg.learnable_self_denoiser and not (d.noise_std > 0 or d.noise_levels):
            raise ConfigError("the learnable denoiser learns to remove the training noise: set data.noise_std")
        torch.manual_seed(cfg.seed)  # identical initial weights on every process
        model = StarFlow(self.model_cfg).to(dev)
        if o.grad_checkpoint:
            for t in list(model.blocks) + [model.learnable_self_denoiser]:
                if t is not None:
                    t.gradient_checkpointing = True
        if o.dropout > 0:
            add_dropout(model, o.dropout)
        self.has_denoiser = model.learnable_self_denoiser is not None
        self.module = TrainModule(model, o.latent_norm_reg > 0).train()
        self.transform = build_transform(d, self.train_set)
        self.pipe = InputPipeline(d, cfg.seed, self.cond, self.ae, dev, ctx.rank, ctx.world, self.transform)
        # probe before wrapping: the plain model, no collectives inside
        adapt_threads()
        self.autocast, self.precision_reason = self._choose_precision()
        self.wrapped = wrap_model(self.module, ctx, find_unused=self.has_denoiser)
        named = list(self.module.named_parameters())  # after wrapping: FSDP's sharded parameters
        self.main_params = [p for n, p in named if ".learnable_self_denoiser." not in f".{n}"]
        self.den_params = [p for n, p in named if ".learnable_self_denoiser." in f".{n}"]
        kw = dict(betas=tuple(o.betas), weight_decay=o.weight_decay)
        self.opt = torch.optim.AdamW(self.main_params, lr=o.lr, **kw)
        self.den_opt = torch.optim.AdamW(self.den_params, lr=o.denoiser_lr, **kw) if self.has_denoiser else None
        self.ema = EMA(self.module, o.ema) if o.ema > 0 else None
        self.sampler = BatchSampler(len(self.train_set), o.batch_size, cfg.seed, self.train_set.bucket_ids())
        if ctx.is_main:       # only now: a config or data error above leaves no folder behind
            self.out.mkdir(parents=True, exist_ok=True)
        self.first_frames = self._first_frames_setup()
        self.ckpt = CheckpointManager(self.out / "checkpoints", cfg.log.keep_last)
        self.metrics = MetricsLog(self.out / "metrics.jsonl", ctx.is_main)

    # ---- precision ---------------------------------------------------------------------------------------
    def _choose_precision(self) -> tuple[bool, str]:
        """(bf16 autocast?, why): `optim.precision` fp32 / bf16 as given; auto picks bf16 on a GPU, and on a
        CPU only where a timed probe of a few steps finds it faster. The reason is printed and saved with the
        run (training.json), and pinning fp32 or bf16 makes the choice independent of the machine's load."""
        choice, dev = self.cfg.optim.precision, self.ctx.device
        if choice != "auto":
            return choice == "bf16", f"optim.precision={choice}"
        if dev.type == "cuda":
            return True, "optim.precision=auto: bf16 autocast on a GPU"
        times = self._probe_step_times()
        if times is None:
            return False, "optim.precision=auto: this CPU has no bf16 support"
        fp32, bf16 = times
        faster = bf16 < 0.9 * fp32
        faster = self.ctx.any(faster) if self.ctx.is_main else self.ctx.any(False)   # rank 0 decides for all
        return faster, (f"optim.precision=auto: a timed probe measured {fp32 * 1e3:.0f} ms (fp32) against "
                        f"{bf16 * 1e3:.0f} ms (bf16) for two steps; pin optim.precision to make it fixed")

    def _probe_step_times(self) -> tuple[float, float] | None:
        """Seconds for two forward/backward passes on a real batch without and with bf16 autocast (small
        models lose to the casts; wide ones win where the CPU has bf16 matrix units); None without CPU bf16."""
        if not torch.backends.mkldnn.is_available() or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return None
        o = self.cfg.optim
        lb = max(1, o.batch_size // (o.grad_accum * self.ctx.world))
        batch = self.train_set.get_batch(torch.arange(min(lb, len(self.train_set))))
        n = batch.values.size(0)
        inp = self.pipe.make(batch, self.pipe.draws(step_generator(0, -1), n, self.pipe.item_shape(batch)), 0.0)
        model = self.module.model
        times = {}
        for flag in (False, True, False, True):
            t0 = time.perf_counter()
            for _ in range(2):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=flag):
                    out = model(inp.x, inp.y)
                    lz, ll = model.loss_terms(out.z, out.logdets)
                (lz + ll).mean().backward()
            times[flag] = time.perf_counter() - t0  # the second round of each counts (the first warms up)
        model.zero_grad(set_to_none=True)
        return times[False], times[True]

    # ---- schedule --------------------------------------------------------------------------------------
    def lr_shape(self, step: int, elapsed: float) -> float:
        """In [0, 1]: linear warm-up, then cosine decay over max_steps (or over max_seconds of training
        time). lr = min_lr + (lr - min_lr) * shape, for the flow and (its own range) the denoiser."""
        o = self.cfg.optim
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.max_steps:
            t = (step - o.warmup_steps) / max(1, o.max_steps - o.warmup_steps)
        else:
            t = elapsed / o.max_seconds
        t = min(max(t, 0.0), 1.0)
        return 0.5 * (1 + math.cos(math.pi * t))

    def _set_lr(self, step: int, elapsed: float) -> float:
        s, o = self.lr_shape(step, elapsed), self.cfg.optim
        lr = o.min_lr + (o.lr - o.min_lr) * s
        for g in self.opt.param_groups:
            g["lr"] = lr
        if self.den_opt is not None:
            for g in self.den_opt.param_groups:
                g["lr"] = o.denoiser_min_lr + (o.denoiser_lr - o.denoiser_min_lr) * s
        return lr

    def done(self, p: Progress) -> bool:
        o = self.cfg.optim
        stop = (o.max_steps is not None and p.step >= o.max_steps) or \
               (o.max_seconds is not None and p.elapsed >= o.max_seconds)
        return self.ctx.any(stop)

    # ---- one optimiser step ------------------------------------------------------------------------------
    def _first_frames_setup(self) -> tuple[BatchSampler, int] | None:
        """data.first_frames: some steps train on the videos' first frames alone, as one-frame videos (images):
        STARFlow-V mixes images into its video training; here they are the videos' own first frames. Such a
        step takes first_frames_batch items (default batch_size x num_frames: the same number of tokens)."""
        d, o = self.cfg.data, self.cfg.optim
        if d.first_frames <= 0:
            return None
        if not self.train_set.is_video:
            raise ConfigError("data.first_frames trains on the first frames of videos: the data has no videos")
        if d.dequantize:
            raise ConfigError("data.first_frames needs Gaussian-noised inputs (noise_std), not dequantize")
        n = d.first_frames_batch or o.batch_size * d.num_frames
        if n % (o.grad_accum * self.ctx.world):
            raise ConfigError(f"data.first_frames_batch {n} must divide into grad_accum {o.grad_accum} x "
                              f"{self.ctx.world} processes")
        return BatchSampler(len(self.train_set), n, self.cfg.seed + 1, self.train_set.bucket_ids()), n

    def _step_items(self, step: int) -> tuple[torch.Tensor, int, bool]:
        """(dataset indices, global batch, first frames only?) of a step; which steps train on first frames is
        drawn from the step's own generator, so it does not depend on resuming or the number of processes."""
        if self.first_frames is not None:
            u = float(torch.rand(1, generator=step_generator(self.cfg.seed, step, -1)))
            if u < self.cfg.data.first_frames:
                sampler, n = self.first_frames
                return sampler.indices(step), n, True
        return self.sampler.indices(step), self.cfg.optim.batch_size, False

    def train_step(self, p: Progress) -> tuple[dict, bool]:
        """One optimiser step at p.step -> (metrics row, whether the update was applied)."""
        cfg, ctx, o = self.cfg, self.ctx, self.cfg.optim
        lr = self._set_lr(p.step, p.elapsed)
        idx, size, first_only = self._step_items(p.step)
        mb = size // o.grad_accum
        lb = mb // ctx.world
        sums = torch.zeros(4, dtype=torch.float64)  # loss, nll-bpd, denoiser loss, samples
        g, draws = step_generator(cfg.seed, p.step), None
        for m in range(o.grad_accum):
            lo = m * mb + ctx.rank * lb                    # this process's items of micro-batch m
            batch = self.train_set.get_batch(idx[lo:lo + lb])
            if draws is None:  # one set of draws for the whole global batch
                draws = self.pipe.draws(g, size, self.pipe.item_shape(batch))
            inp = self.pipe.make(batch, draws.slice(lo, lo + lb), cfg.data.caption_dropout)
            if first_only:
                inp = dataclasses.replace(inp, x=inp.x[:, :1].contiguous())
            x = inp.x.requires_grad_(self.has_denoiser)
            with no_sync(self.wrapped, m == o.grad_accum - 1):
                with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                    loss_z, loss_logdet, reg = self.wrapped(x, inp.y)
                per = loss_z.float() + loss_logdet.float()                       # (b,) official loss terms
                loss = (per * inp.weights).mean() if inp.weights is not None else per.mean()
                loss = loss + o.latent_norm_reg * reg
                (loss / o.grad_accum).backward()
                if self.has_denoiser:
                    # the flow's score, scaled to ~unit variance as the official recipe: d(per-sample NLL)/dx * sigma
                    score = denoiser_target(x.grad, o.grad_accum, inp.sigma)
                    with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                        pred = self.wrapped(x.detach(), inp.y, denoise=True)
                    loss_d = F.mse_loss(pred.float(), score.float())
                    (loss_d / o.grad_accum).backward()
                    sums[2] += loss_d.detach().double() * x.size(0)
            nll = self.pipe.nll_of_data(nll_from_terms(loss_z.detach(), loss_logdet.detach(), x[0].numel()), inp)
            sums[0] += loss.detach().double() * x.size(0)
            sums[1] += self.pipe.nll_to_bpd(nll, x[0].numel(), batch.levels).sum().cpu()
            sums[3] += x.size(0)
        clip = o.grad_clip if o.grad_clip > 0 else float("inf")
        norm = float(to_local_scalar(torch.nn.utils.clip_grad_norm_(self.main_params, clip)))
        den_norm = float(to_local_scalar(torch.nn.utils.clip_grad_norm_(self.den_params, clip))) \
            if self.has_denoiser else 0.0
        sums = ctx.all_sum(sums)
        finite = math.isfinite(float(sums[0])) and math.isfinite(norm) and math.isfinite(den_norm)
        too_big = (o.grad_skip_threshold > 0 and p.step >= o.grad_skip_after
                   and max(norm, den_norm) > o.grad_skip_threshold)
        applied = finite and not too_big
        if applied:
            self.opt.step()
            if self.den_opt is not None:
                self.den_opt.step()
            if self.ema is not None:
                self.ema.update()
        self.opt.zero_grad(set_to_none=True)
        if self.den_opt is not None:
            self.den_opt.zero_grad(set_to_none=True)
        n = float(sums[3])
        out = {"loss": float(sums[0]) / n, "bpd": float(sums[1]) / n, "lr": lr, "grad_norm": norm}
        if self.has_denoiser:
            out["loss_denoiser"] = float(sums[2]) / n
            out["denoiser_grad_norm"] = den_norm
        return out, applied

    def weights_finite(self) -> bool:
        """Whether every trained weight (and EMA average) is finite, on every process (one sync)."""
        tensors = [_local(p).detach() for p in self.module.parameters()]
        tensors += [_local(t) for t in self.ema.shadow] if self.ema is not None else []
        flags = [torch.isfinite(t).all() for t in tensors if t.numel()]
        bad = bool(flags) and not bool(torch.stack(flags).all())
        return not self.ctx.any(bad)

    def diverged(self, p: Progress, why: str) -> NonFiniteWeightsError:
        """The error that stops a run whose model diverged, naming what is kept and what to do."""
        newest = self.ckpt.latest()
        kept = (f"the newest checkpoint is still {newest.name} (step {int(newest.name.split('-')[1])}), saved "
                f"before it" if newest else "no checkpoint had been saved")
        return NonFiniteWeightsError(
            f"{why} at step {p.step}: training stopped, nothing saved after it and no final/ model exported; {kept}. "
            f"Lower optim.lr (now {self.cfg.optim.lr:g}) or clip gradients (optim.grad_clip), then --resume or "
            f"start again")

    # ---- evaluation, samples, checkpoints --------------------------------------------------------------
    def evaluate(self, dataset=None) -> float | None:
        """Bits/dim of the current (EMA) weights on `dataset` (default: the held-out test split)."""
        dataset = self.held_set if dataset is None else dataset
        if dataset is None:
            return None
        self.module.eval()
        try:
            with (self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext()):
                return heldout_bpd(self.wrapped, dataset, self.pipe, self.ctx, self.cfg.log.eval_draws,
                                   max_items=self.cfg.log.eval_max_items)
        finally:
            self.module.train()

    def _selected(self) -> list[torch.Tensor]:
        """The tensors that are the model being evaluated: EMA averages, or the parameters."""
        return self.ema.shadow if self.ema is not None else [p for p in self.module.parameters() if p.requires_grad]

    def snapshot(self) -> list[torch.Tensor]:
        return [t.detach().clone() for t in self._selected()]

    @torch.no_grad()
    def restore(self, snap: list[torch.Tensor]) -> None:
        for t, s in zip(self._selected(), snap):
            t.copy_(s)

    def plain_model(self) -> StarFlow | None:
        """A single-process copy of the current (EMA) weights on rank 0; collective under FSDP."""
        with (self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext()):
            sd = full_model_state(self.wrapped, self.ctx)
        if not self.ctx.is_main:
            return None
        model = StarFlow(self.model_cfg)
        model.load_state_dict(strip_prefix(sd), strict=True)
        return model.to(self.ctx.device).eval()

    def pipeline(self, model: StarFlow):
        """The trained flow as a pipeline, with the conditioning, autoencoder, noise level and input transform
        it was trained with: what the sample grids run and what the run exports."""
        from ..pipelines import BasePipeline
        from ..pipelines.spec import spec_from_training

        spec = spec_from_training(self.cfg.to_dict(), model.config)
        encoder = self.cond.encoder if self.cond.mode != "none" else None
        return BasePipeline._class_for(spec.kind)(
            model, encoder, self.ae, defaults=spec.defaults, text_encoder_spec=spec.text_encoder,
            autoencoder_spec=spec.autoencoder, input_transform=self.transform, training_info=self.info())

    def write_samples(self, model: StarFlow | None, p: Progress) -> None:
        if model is None or self.cfg.log.sample_every < 0:
            return
        log = self.cfg.log
        captions = sorted(set(self.train_set.captions))[:log.sample_count]
        path = self.out / "samples" / f"step_{p.step:08d}.png"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NonFiniteSampleWarning)
            sample_grid(self.pipeline(model), path, count=log.sample_count, guidance=log.sample_guidance,
                        captions=captions, class_count=self.train_set.num_classes, item_shape=self.item_shape,
                        seed=self.cfg.seed)
        for w in caught:
            if issubclass(w.category, NonFiniteSampleWarning):
                # a grid with black cells deserves a line in the run's log and metrics, not only a warning
                self.metrics.append({"step": p.step, "sample_warning": str(w.message), "time": round(p.elapsed, 3)})
                if self.cfg.log.progress:
                    print(f"step {p.step}: samples in {path.name}: {w.message}", flush=True)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    def info(self) -> dict:
        """training.json: how the run was trained (the pipeline folder says how to use the model)."""
        return {"train": {**self.cfg.to_dict(), "model": self.model_cfg.to_dict()},
                "precision": "bf16 autocast" if self.autocast else "float32", "precision_reason": self.precision_reason,
                "conditioning": self.cond.spec_info, "class_names": self.train_set.class_names,
                "item_shape": list(self.item_shape), "levels": self.train_set.levels}

    def export(self, model: StarFlow, folder: Path) -> Path:
        """The trained model as a pipeline folder, with training.json (rank 0)."""
        return self.pipeline(model).save_pretrained(folder)

    def save_checkpoint(self, p: Progress) -> None:
        ctx = self.ctx
        weights = {"model": strip_prefix(full_model_state(self.wrapped, ctx))}
        if self.transform is not None and self.transform.tensors():
            weights["input_transform"] = self.transform.tensors()
        state = {"step": p.step, "elapsed": p.elapsed, "skipped": p.skipped, "samples": p.samples,
                 "optimizer": full_optim_state(self.wrapped, self.opt), "world": ctx.world,
                 "metrics_rows": len(self.metrics.rows)}   # a resume drops the rows logged after this
        if self.den_opt is not None:
            state["denoiser_optimizer"] = full_optim_state(self.wrapped, self.den_opt)
        if self.ema is not None:
            weights["ema"] = strip_prefix(self.ema.state())
            state["ema_updates"] = self.ema.updates
        rng = torch.get_rng_state()
        states = [rng]
        if ctx.distributed:
            states = [None] * ctx.world
            torch.distributed.all_gather_object(states, rng)
        state["rng"] = states
        if ctx.is_main:
            self.ckpt.save(p.step, weights, state, {TRAINING_FILE: json.dumps(self.info(), indent=2, default=str)})
        ctx.barrier()

    def resume(self) -> Progress | None:
        """Restore the latest checkpoint that can be resumed from (training.resume)."""
        from .resume import resume_run
        return resume_run(self)


def _local(t: torch.Tensor) -> torch.Tensor:
    """This process's part of a (possibly FSDP-sharded) tensor."""
    return t.to_local() if hasattr(t, "to_local") else t
