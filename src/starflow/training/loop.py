"""The training loop, nanoGPT-style: one plain function that owns the run's progress (step, time, skipped
steps) and calls the Trainer's pieces: steps, metrics rows, periodic evaluation, sample grids,
checkpoints, and the final export.

Nothing is lost: the output folder is checked before any work (an earlier run there is continued with
`resume`, replaced with `overwrite`, or refused); what a killed run left half-written is cleaned up at the
start; and a run whose weights become non-finite (or whose loss stays non-finite for
`optim.nonfinite_patience` steps in a row, each skipped) stops with NonFiniteWeightsError before anything is
saved over its last good checkpoint or exported."""
from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

from tqdm.auto import tqdm

from .._cpu import adapt_threads
from ..flow.io import clean_atomic_leftovers
from ..outputs import OutputError, check_writable_dir
from .config import TrainConfig
from .distributed import ProcessGroupTimeout, is_timeout, setup_distributed
from .plots import plot_curves
from .trainer import Progress, Trainer, TrainResult

__all__ = ["train", "run", "check_run_folder"]

# what `starflow train` writes in log.out_dir: an earlier run is these (overwrite removes exactly these)
RUN_OUTPUTS = ("checkpoints", "final", "samples", "metrics.jsonl", "curves.png")


def check_run_folder(cfg: TrainConfig) -> Path:
    """log.out_dir can be written, and holds no earlier run unless the config continues (resume) or replaces
    (overwrite) it. Read-only but for a probe file: every process of a launch may call it."""
    out = Path(cfg.log.out_dir)
    check_writable_dir(out, "log.out_dir", create=False)       # made by the trainer once its data loads
    ckpts = out / "checkpoints"
    earlier = (ckpts.is_dir() and any(p.name.startswith("ckpt-") for p in ckpts.iterdir())) or (out / "final").exists()
    if earlier and not (cfg.resume or cfg.overwrite):
        raise OutputError(f"log.out_dir {out} holds an earlier run (checkpoints or final/): --resume continues it, "
                          f"--overwrite starts it again (removing its {', '.join(RUN_OUTPUTS)}), or choose another "
                          f"--out")
    return out


def _remove_run_outputs(out: Path) -> None:
    for name in RUN_OUTPUTS:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def train(cfg: TrainConfig) -> TrainResult:
    """Train per `cfg` (single process, or every process of a torchrun launch)."""
    out = check_run_folder(cfg)                   # before any work, on every process
    ctx = setup_distributed(cfg.dist.strategy, cfg.dist.backend, cfg.dist.timeout_s)
    try:
        if ctx.is_main:
            if cfg.overwrite:
                _remove_run_outputs(out)
            clean_atomic_leftovers(out / "final")      # a kill during the export: its temporary copy
            clean_atomic_leftovers(out / "metrics.jsonl")
        ctx.barrier()
        return run(Trainer(cfg, ctx))
    except RuntimeError as e:
        if ctx.distributed and is_timeout(e) and not isinstance(e, ProcessGroupTimeout):
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise ProcessGroupTimeout(f"process {ctx.rank}: another process of the run did not answer within "
                                      f"dist.timeout_s={cfg.dist.timeout_s:g} s (it froze or died, or worked alone "
                                      f"for longer: raise dist.timeout_s for that); the newest checkpoint is kept "
                                      f"({first})") from e
        raise
    finally:
        ctx.cleanup()


def _average(window: list[tuple[dict, float]], batch: int) -> dict:
    row = {k: sum(r[k] for r, _ in window) / len(window) for k in window[0][0] if k != "lr"}
    row["lr"] = window[-1][0]["lr"]
    row["samples_per_s"] = batch * len(window) / max(sum(dt for _, dt in window), 1e-9)
    return row


def run(tr: Trainer) -> TrainResult:
    cfg, ctx, log, o = tr.cfg, tr.ctx, tr.cfg.log, tr.cfg.optim
    if ctx.is_main:
        tr.ckpt.clean_partial()
    ctx.barrier()
    p = tr.resume() if cfg.resume else None
    resumed = p is not None
    if not resumed:
        p = Progress()
        tr.metrics.start()                    # a fresh run starts a fresh log
    if ctx.is_main and log.progress:
        where = f"resumed at step {p.step}" if resumed else "from scratch"
        n_params = sum(q.numel() for q in tr.module.model.parameters())
        print(f"training {n_params / 1e6:.2f}M parameters, {ctx.world} process(es), {ctx.strategy}, "
              f"{'bf16 autocast' if tr.autocast else 'float32'} ({tr.precision_reason}), {where}; "
              f"writing to {tr.out}", flush=True)

    def row(extra: dict) -> None:
        tr.metrics.append({"step": p.step, **extra, "time": round(p.elapsed, 3)})

    bar = tqdm(total=o.max_steps, initial=p.step, unit="step", dynamic_ncols=True,
               disable=not (log.progress and ctx.is_main))
    window: list[tuple[dict, float]] = []
    last_ckpt, last_ckpt_step = time.monotonic(), p.step
    last_eval: tuple[int, float | None] = (-1, None)
    sampled_at = -1                     # step of the last sample grid
    best: tuple[int, float, list | None] = (-1, float("inf"), None)   # step, validation bpd, weights
    bad_streak = 0                      # steps in a row skipped for a non-finite loss or gradient
    last = tr.done(p)
    while not last:
        adapt_threads()                 # the cores other processes leave free (_cpu.py); once a second at most
        t0 = time.perf_counter()
        out, applied = tr.train_step(p)
        dt = time.perf_counter() - t0
        p.elapsed += dt
        p.step += 1
        p.samples += o.batch_size
        p.skipped += not applied
        # the skip rule had its chance (a step with a non-finite loss or gradient changes nothing); an applied
        # update that makes the weights non-finite, or a loss that stays non-finite, ends the run here: before
        # a row of NaN, a checkpoint over the last good one, or an export
        if applied and not tr.weights_finite():
            bar.close()
            raise tr.diverged(p, "the weights became NaN or infinite after an update with a finite loss and "
                                 "gradient")
        finite = all(math.isfinite(out[k]) for k in ("loss", "grad_norm", "denoiser_grad_norm") if k in out)
        bad_streak = 0 if finite else bad_streak + 1
        if o.nonfinite_patience and bad_streak >= o.nonfinite_patience:
            bar.close()
            raise tr.diverged(p, f"the loss or gradient has been non-finite for {bad_streak} steps in a row (each "
                                 f"skipped)")
        window.append((out, dt))
        bar.update(1)
        bar.set_postfix(loss=f"{out['loss']:.4f}", bpd=f"{out['bpd']:.3f}", lr=f"{out['lr']:.2e}",
                        sps=f"{o.batch_size / dt:.0f}", refresh=False)
        last = tr.done(p)
        if p.step % log.log_every == 0 or last:  # the last partial window too, before the last checkpoint
            row({**_average(window, o.batch_size), "skipped": p.skipped})
            window = []
        if log.eval_every and p.step % log.eval_every == 0:
            if tr.val_set is not None:
                val = tr.evaluate(tr.val_set)
                row({"val_bpd": val})
                if log.keep_best and val < best[1]:
                    best = (p.step, val, tr.snapshot())
            bpd = tr.evaluate()
            last_eval = (p.step, bpd)
            if bpd is not None:
                row({"eval_bpd": bpd})
                bar.write(f"step {p.step}: held-out {bpd:.4f} bits/dim")
        if log.sample_every > 0 and p.step % log.sample_every == 0:
            tr.write_samples(tr.plain_model(), p)
            sampled_at = p.step
        by_time = log.ckpt_every_seconds > 0 and ctx.any(time.monotonic() - last_ckpt >= log.ckpt_every_seconds)
        if (log.ckpt_every and p.step % log.ckpt_every == 0) or by_time or last:
            tr.save_checkpoint(p)
            last_ckpt, last_ckpt_step = time.monotonic(), p.step
    bar.close()
    if last_ckpt_step != p.step or not tr.ckpt.complete():
        tr.save_checkpoint(p)
    return _finish(tr, p, best, last_eval, sampled_at, row)


def _finish(tr: Trainer, p: Progress, best: tuple, last_eval: tuple, sampled_at: int, row) -> TrainResult:
    """After the last step: keep the best validation weights if asked, the final held-out figure, the
    exported pipeline folder (final/), its sample grid and the curves."""
    ctx, log = tr.ctx, tr.cfg.log
    if log.keep_best and tr.val_set is not None:
        vals = [r["val_bpd"] for r in tr.metrics.rows if r.get("step") == p.step and "val_bpd" in r]
        val = vals[-1] if vals else tr.evaluate(tr.val_set)
        if best[2] is not None and best[1] < val:  # the final weights are not the best: take the best
            tr.restore(best[2])
            last_eval = (-1, None)
            sampled_at = -1       # other weights: the last grid is not theirs
            row({"best_step": best[0], "val_bpd": best[1]})
            if ctx.is_main and log.progress:
                print(f"keeping the weights of step {best[0]} (validation {best[1]:.4f} bits/dim)", flush=True)
    test_bpd = last_eval[1] if last_eval[0] == p.step else tr.evaluate()
    if test_bpd is not None and last_eval[0] != p.step:
        row({"eval_bpd": test_bpd})
    model = tr.plain_model()
    final = tr.out / "final"
    if ctx.is_main:
        tr.export(model, final)
        if log.sample_every >= 0 and sampled_at != p.step:   # not twice for the same step and weights
            tr.write_samples(model, p)
        if log.plot:
            plot_curves(tr.metrics.rows, tr.out / "curves.png")
        if log.progress:
            msg = f"done: {p.step} steps in {p.elapsed:.0f}s, {p.skipped} skipped"
            print(msg + (f", held-out {test_bpd:.4f} bits/dim" if test_bpd is not None else ""), flush=True)
    ctx.barrier()
    return TrainResult(final, p.step, test_bpd, model, list(tr.metrics.rows), tr.out, p.elapsed, p.skipped)
