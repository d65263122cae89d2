"""The outer loop around `Trainer.train_step`: progress bar, metrics rows, periodic evaluation, samples,
checkpoints, and the final export."""
from __future__ import annotations

import time

from tqdm.auto import tqdm

from .checkpoint import save_trained
from .plots import plot_curves

__all__ = ["run_loop"]


def _average(window: list[tuple[dict, float]], batch: int) -> dict:
    keys = [k for k in window[0][0] if k not in ("skipped", "lr")]
    row = {k: sum(r[k] for r, _ in window) / len(window) for k in keys}
    row["lr"] = window[-1][0]["lr"]
    row["skipped"] = window[-1][0]["skipped"]
    row["samples_per_s"] = batch * len(window) / max(sum(dt for _, dt in window), 1e-9)
    return row


def _val_at(rows: list[dict], step: int) -> float | None:
    vals = [r["val_bpd"] for r in rows if r.get("step") == step and "val_bpd" in r]
    return vals[-1] if vals else None


def run_loop(tr):
    from .trainer import TrainResult

    cfg, ctx, log, o = tr.cfg, tr.ctx, tr.cfg.log, tr.cfg.optim
    if ctx.is_main:
        tr.ckpt.clean_partial()
    ctx.barrier()
    resumed = tr.resume() if cfg.resume else False
    if not resumed and ctx.is_main:
        (tr.out / "metrics.jsonl").write_text("")  # a fresh run starts a fresh log
    if ctx.is_main and log.progress:
        where = f"resumed at step {tr.step}" if resumed else "from scratch"
        n_params = sum(p.numel() for p in tr.module.model.parameters())
        precision = "bf16 autocast" if tr.autocast else "float32"
        print(f"training {n_params / 1e6:.2f}M parameters, {ctx.world} process(es), {ctx.strategy}, {precision}, "
              f"{where}; writing to {tr.out}", flush=True)
    bar = tqdm(total=o.max_steps, initial=tr.step, unit="step", dynamic_ncols=True,
               disable=not (log.progress and ctx.is_main))
    window: list[tuple[dict, float]] = []
    last_ckpt, last_ckpt_step = time.monotonic(), tr.step
    last_eval: tuple[int, float | None] = (-1, None)
    sampled_at = -1                     # step of the last sample grid
    best: tuple[int, float, list | None] = (-1, float("inf"), None)   # step, validation bpd, weights
    while not tr._done():
        t0 = time.perf_counter()
        row = tr.train_step()
        dt = time.perf_counter() - t0
        tr.elapsed += dt
        tr.step += 1
        window.append((row, dt))
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.4f}", bpd=f"{row['bpd']:.3f}", lr=f"{row['lr']:.2e}",
                        sps=f"{o.batch_size / dt:.0f}", refresh=False)
        if tr.step % max(1, log.log_every) == 0:
            tr.log_row({"step": tr.step, **_average(window, o.batch_size), "time": round(tr.elapsed, 3)})
            window = []
        if log.eval_every and tr.step % log.eval_every == 0:
            if tr.val_set is not None:
                val = tr.evaluate(tr.val_set)
                tr.log_row({"step": tr.step, "val_bpd": val, "time": round(tr.elapsed, 3)})
                if log.keep_best and val < best[1]:
                    best = (tr.step, val, tr.snapshot())
            bpd = tr.evaluate()
            last_eval = (tr.step, bpd)
            if bpd is not None:
                tr.log_row({"step": tr.step, "eval_bpd": bpd, "time": round(tr.elapsed, 3)})
                bar.write(f"step {tr.step}: held-out {bpd:.4f} bits/dim")
        if log.sample_every > 0 and tr.step % log.sample_every == 0:
            tr.write_samples(tr.plain_model())
            sampled_at = tr.step
        by_time = log.ckpt_every_seconds > 0 and ctx.any(time.monotonic() - last_ckpt >= log.ckpt_every_seconds)
        if (log.ckpt_every and tr.step % log.ckpt_every == 0) or by_time:
            tr.save_checkpoint()
            last_ckpt, last_ckpt_step = time.monotonic(), tr.step
    bar.close()
    if window:
        tr.log_row({"step": tr.step, **_average(window, o.batch_size), "time": round(tr.elapsed, 3)})
    if last_ckpt_step != tr.step or not tr.ckpt.complete():
        tr.save_checkpoint()
    if log.keep_best and tr.val_set is not None:
        val = last_val if (last_val := _val_at(tr.metrics, tr.step)) is not None else tr.evaluate(tr.val_set)
        if best[2] is not None and best[1] < val:  # the final weights are not the best: take the best
            tr.restore(best[2])
            last_eval = (-1, None)
            sampled_at = -1       # other weights: the last grid is not theirs
            tr.log_row({"step": tr.step, "best_step": best[0], "val_bpd": best[1], "time": round(tr.elapsed, 3)})
            if ctx.is_main and log.progress:
                print(f"keeping the weights of step {best[0]} (validation {best[1]:.4f} bits/dim)", flush=True)
    test_bpd = last_eval[1] if last_eval[0] == tr.step else tr.evaluate()
    if test_bpd is not None and last_eval[0] != tr.step:
        tr.log_row({"step": tr.step, "eval_bpd": test_bpd, "time": round(tr.elapsed, 3)})
    model = tr.plain_model()
    final = tr.out / "final"
    if ctx.is_main:
        extra = {"input_transform": tr.transform.tensors()} if tr.transform is not None else {}
        save_trained(final, {k: v.detach().cpu() for k, v in model.state_dict().items()}, tr.info(),
                     {k: v for k, v in extra.items() if v})
        if log.sample_every >= 0 and sampled_at != tr.step:   # not twice for the same step and weights
            tr.write_samples(model)
        if log.plot:
            plot_curves(tr.metrics, tr.out / "curves.png")
        if log.progress:
            msg = f"done: {tr.step} steps in {tr.elapsed:.0f}s, {tr.skipped} skipped"
            print(msg + (f", held-out {test_bpd:.4f} bits/dim" if test_bpd is not None else ""), flush=True)
    ctx.barrier()
    return TrainResult(final, tr.step, test_bpd, model, list(tr.metrics), tr.out, tr.elapsed, tr.skipped)
