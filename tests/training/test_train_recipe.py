"""The training recipe, term by term: inputs (caption dropout, noise, dequantisation, noise weighting), the
latent-norm regulariser, AdamW + warm-up/cosine schedule, gradient clipping, the bf16 choice, periodic
outputs, the held-out likelihood protocol, and latent-space training through a real autoencoder."""
from __future__ import annotations

import json
import math

import pytest
import torch

from starflow.data import DigitsDataset, to_unit_range
from starflow.flow.likelihood import bits_per_dim, nll
from starflow.training import DataConfig, train
from starflow.training.distributed import setup_distributed
from starflow.training.evaluate import EVAL_SEED
from starflow.training.inputs import Conditioner, InputPipeline, step_generator
from starflow.training.trainer import Progress, Trainer, TrainModule

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return DigitsDataset("train")


@pytest.fixture(scope="module")
def labels_cond(digits):
    return Conditioner("labels", "minilm", 1, digits, CPU)


def _pipe(cond, **data):
    return InputPipeline(DataConfig(**data), 0, cond, None, CPU, 0, 1)


def _batch_and_draws(pipe, dataset, n=24, seed=3):
    batch = dataset.get_batch(torch.arange(n))
    return batch, pipe.draws(torch.Generator().manual_seed(seed), n, pipe.item_shape(batch))


def _trainer(tiny_cfg, *extra, out="tr"):
    return Trainer(tiny_cfg(*extra, out=out), setup_distributed("none"))


# ---- 1. inputs ------------------------------------------------------------------------------------------------

def test_caption_dropout_gives_null_rows_at_one_and_label_rows_at_zero(digits, labels_cond):
    pipe = _pipe(labels_cond, condition="labels", dequantize=True)
    batch, draws = _batch_and_draws(pipe, digits)
    n = batch.values.size(0)
    null = labels_cond.null(n)
    rows = labels_cond.prompts(batch.labels.tolist())
    assert not torch.equal(null[0], rows[0]) and len(set(batch.labels.tolist())) > 3
    torch.testing.assert_close(pipe.make(batch, draws, 1.0).y, null, rtol=0, atol=0)
    y0 = pipe.make(batch, draws, 0.0).y
    torch.testing.assert_close(y0, rows, rtol=0, atol=0)
    # labels encoder: a one-hot of the class (10 classes + the null slot)
    assert y0.shape == (n, 1, 11) and torch.equal(y0[:, 0, :10].argmax(-1), batch.labels)
    # in between: exactly the rows whose drop draw is below p
    p = 0.5
    y = pipe.make(batch, draws, p).y
    dropped = draws.drop < p
    assert 0 < int(dropped.sum()) < n
    torch.testing.assert_close(y[dropped], null[dropped], rtol=0, atol=0)
    torch.testing.assert_close(y[~dropped], rows[~dropped], rtol=0, atol=0)


def test_gaussian_noise_is_sigma_times_the_drawn_noise(digits, labels_cond):
    pipe = _pipe(labels_cond, condition="labels", noise_std=0.3)
    batch, draws = _batch_and_draws(pipe, digits, n=64)
    inp = pipe.make(batch, draws, 0.0)
    clean = to_unit_range(batch.values, batch.levels)
    assert draws.noise.shape == inp.x.shape and inp.weights is None
    torch.testing.assert_close(inp.sigma, torch.full((64,), 0.3))
    torch.testing.assert_close(inp.x - clean, 0.3 * draws.noise, rtol=0, atol=1e-6)
    torch.testing.assert_close(inp.x - 0.3 * draws.noise, clean, rtol=0, atol=1e-6)  # clean data recoverable
    assert float((inp.x - clean).std()) == pytest.approx(0.3, rel=0.05)
    assert float(clean.min()) == -1.0 and float(clean.max()) == 1.0  # v * 2/(L-1) - 1


def test_dequantisation_is_v_plus_u_over_levels(digits, labels_cond):
    pipe = _pipe(labels_cond, condition="labels", dequantize=True)
    batch, draws = _batch_and_draws(pipe, digits)
    inp = pipe.make(batch, draws, 0.0)
    assert inp.sigma is None and inp.weights is None
    assert float(draws.noise.min()) >= 0 and float(draws.noise.max()) < 1
    torch.testing.assert_close(inp.x, (batch.values.float() + draws.noise) * 2 / 17 - 1, rtol=0, atol=1e-6)
    assert float(inp.x.min()) >= -1 and float(inp.x.max()) < 1


def test_noise_levels_and_weighting(digits, labels_cond):
    pipe = _pipe(labels_cond, condition="labels", noise_levels=[0.1, 0.5], noise_weighting=True, noise_ref=0.25)
    batch, draws = _batch_and_draws(pipe, digits, n=64)
    inp = pipe.make(batch, draws, 0.0)
    assert sorted({round(v, 6) for v in inp.sigma.tolist()}) == [0.1, 0.5]  # both levels are drawn
    torch.testing.assert_close(inp.weights, inp.sigma / 0.25)
    clean = to_unit_range(batch.values, batch.levels)
    torch.testing.assert_close(inp.x - clean, inp.sigma.view(-1, 1, 1, 1) * draws.noise, rtol=0, atol=1e-6)
    # no weighting: no weights
    assert _pipe(labels_cond, condition="labels", noise_std=0.3).make(batch, draws, 0.0).weights is None


def test_noise_weighting_scales_the_training_loss(tiny_cfg):
    plain = _trainer(tiny_cfg, "data.dequantize=false", "data.noise_std=0.3", out="p")
    weighted = _trainer(tiny_cfg, "data.dequantize=false", "data.noise_std=0.3", "data.noise_weighting=true",
                        "data.noise_ref=0.1", out="w")
    a, b = plain.train_step(Progress())[0]["loss"], weighted.train_step(Progress())[0]["loss"]
    assert b == pytest.approx(a * 0.3 / 0.1, rel=1e-5)   # weights sigma / noise_ref = 3 on every sample


def _step0_terms(tr):
    """The loss terms of step 0's batch, recomputed from the same indices and draws as the trainer."""
    cfg = tr.cfg
    batch = tr.train_set.get_batch(tr.sampler.indices(0)[:cfg.optim.batch_size])
    draws = tr.pipe.draws(step_generator(cfg.seed, 0), cfg.optim.batch_size, tr.pipe.item_shape(batch))
    inp = tr.pipe.make(batch, draws, cfg.data.caption_dropout)
    with torch.no_grad():
        return tr.module(inp.x, inp.y), inp


def test_latent_norm_regulariser_enters_the_loss(tiny_cfg):
    with_reg = _trainer(tiny_cfg, "optim.latent_norm_reg=0.5", out="r")
    without = _trainer(tiny_cfg, out="n")
    (lz, ll, reg), inp = _step0_terms(with_reg)
    # the regulariser: mean square of the intermediate block outputs (not the input, not the final z)
    with torch.no_grad():
        out = with_reg.module.model(inp.x, inp.y)
    assert len(out.block_outputs) == 3
    assert float(reg) == pytest.approx(float(out.block_outputs[1].float().pow(2).mean()), rel=1e-6)
    assert float(reg) > 0
    (lz0, ll0, reg0), _ = _step0_terms(without)
    assert float(reg0) == 0.0
    torch.testing.assert_close(lz0, lz)   # same initial weights and batch
    row_r, row_n = with_reg.train_step(Progress())[0], without.train_step(Progress())[0]
    assert row_n["loss"] == pytest.approx(float((lz + ll).mean()), rel=1e-5)
    assert row_r["loss"] == pytest.approx(float((lz + ll).mean() + 0.5 * reg), rel=1e-5)
    assert row_r["loss"] - row_n["loss"] == pytest.approx(0.5 * float(reg), rel=1e-3)
    assert row_r["grad_norm"] != pytest.approx(row_n["grad_norm"], rel=1e-4)  # it has a gradient


# ---- 2. optimiser, schedule, clipping, bf16 ------------------------------------------------------------------

def test_adamw_betas_and_weight_decay(tiny_cfg):
    tr = _trainer(tiny_cfg, "optim.weight_decay=0.03")
    assert type(tr.opt) is torch.optim.AdamW and len(tr.opt.param_groups) == 1
    g = tr.opt.param_groups[0]
    assert g["betas"] == (0.9, 0.95) and g["weight_decay"] == 0.03 and g["lr"] == 3e-3
    assert sum(p.numel() for p in g["params"]) == sum(p.numel() for p in tr.module.model.parameters())


def test_learning_rate_schedule_is_warmup_then_cosine(tiny_cfg):
    lr, min_lr, warm, total = 1e-2, 1e-4, 5, 45
    tr = _trainer(tiny_cfg, f"optim.lr={lr}", f"optim.min_lr={min_lr}", f"optim.warmup_steps={warm}",
                  f"optim.max_steps={total}")
    lrs = []
    for s in range(total + 1):
        lrs.append(tr._set_lr(s, 0.0))
        assert tr.opt.param_groups[0]["lr"] == lrs[-1]
    assert lrs[0] == pytest.approx(min_lr + (lr - min_lr) / warm)     # first step: 1/warm of the way up
    assert all(b > a for a, b in zip(lrs[:warm], lrs[1:warm]))       # linear warm-up
    assert lrs[warm - 1] == pytest.approx(lr) and lrs[warm] == pytest.approx(lr)   # the peak
    mid = warm + (total - warm) // 2
    assert lrs[mid] == pytest.approx(min_lr + (lr - min_lr) * 0.5)   # cosine: half-way at mid decay
    assert all(b < a for a, b in zip(lrs[warm:], lrs[warm + 1:]))    # strictly decreasing after warm-up
    assert lrs[total] == pytest.approx(min_lr)
    assert lrs[total - 1] < min_lr + 0.01 * (lr - min_lr)             # the last trained step is near min_lr
    # by wall time when there is no step budget
    tr.cfg.optim.max_steps, tr.cfg.optim.max_seconds = None, 10.0
    assert tr._set_lr(warm + 3, 5.0) == pytest.approx(min_lr + (lr - min_lr) * 0.5)


def test_logged_learning_rates_follow_the_schedule(tiny_cfg):
    r = train(tiny_cfg("optim.max_steps=6", "optim.warmup_steps=2", "optim.lr=4e-3", "optim.min_lr=0"))
    got = [m["lr"] for m in r.metrics if "loss" in m]
    shape = [1 / 2, 1.0] + [0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(4)]
    assert got == pytest.approx([4e-3 * s for s in shape])


def _grad_norm_at_update(tr):
    """Wrap the optimiser step: the total gradient norm the update actually used."""
    seen = []
    step = tr.opt.step

    def spy(*a, **k):
        seen.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in tr.main_params]))))
        return step(*a, **k)
    tr.opt.step = spy
    return seen


def test_gradient_clipping_bounds_the_update_gradient(tiny_cfg):
    clipped = _trainer(tiny_cfg, "optim.grad_clip=0.05", out="c")
    free = _trainer(tiny_cfg, "optim.grad_clip=0", out="f")
    seen_c, seen_f = _grad_norm_at_update(clipped), _grad_norm_at_update(free)
    before = [p.detach().clone() for p in clipped.module.parameters()]
    row_c, row_f = clipped.train_step(Progress())[0], free.train_step(Progress())[0]
    # the logged norm is the raw one; the update used the clipped gradient
    assert row_c["grad_norm"] == pytest.approx(row_f["grad_norm"], rel=1e-5) and row_c["grad_norm"] > 0.5
    assert seen_c[0] == pytest.approx(0.05, rel=1e-4)
    assert seen_f[0] == pytest.approx(row_f["grad_norm"], rel=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(before, clipped.module.parameters()))  # it did update


@pytest.mark.parametrize("faster", [True, False])
def test_precision_auto_on_cpu_follows_the_probe_and_says_why(tiny_cfg, monkeypatch, faster):
    calls = []
    times = (1.0, 0.5) if faster else (1.0, 2.0)
    monkeypatch.setattr(Trainer, "_probe_step_times", lambda self: calls.append(1) or times)
    tr = _trainer(tiny_cfg, "optim.precision=auto")
    assert calls == [1] and tr.autocast is faster
    assert "1000 ms (fp32) against" in tr.precision_reason and tr.info()["precision_reason"] == tr.precision_reason
    # the training forward runs under (or outside) CPU bf16 autocast accordingly
    seen = []
    forward = TrainModule.forward

    def spy(self, x, y, denoise=False):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return forward(self, x, y, denoise)
    monkeypatch.setattr(TrainModule, "forward", spy)
    row, applied = tr.train_step(Progress())
    assert seen == [faster] and math.isfinite(row["loss"]) and applied


@pytest.mark.parametrize("flag, said", [("bf16", "bf16 autocast"), ("fp32", "float32")])
def test_the_run_says_its_precision(tiny_cfg, capsys, flag, said):
    # the first line says the precision and why (auto would name the probe's timings)
    train(tiny_cfg(f"optim.precision={flag}", "log.progress=true", "optim.max_steps=1", "log.eval_max_items=8"))
    first = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("training "))
    assert f", {said} (optim.precision={flag}), from scratch;" in first


@pytest.mark.parametrize("flag, expected", [("bf16", True), ("fp32", False)])
def test_explicit_precision_skips_the_probe(tiny_cfg, monkeypatch, flag, expected):
    def probe(self):
        raise AssertionError("the probe must not run for an explicit choice")
    monkeypatch.setattr(Trainer, "_probe_step_times", probe)
    assert _trainer(tiny_cfg, f"optim.precision={flag}").autocast is expected


# ---- 3. outputs -----------------------------------------------------------------------------------------------

def test_periodic_samples_metrics_and_evaluations(tiny_cfg, tmp_path, monkeypatch):
    from starflow.training.trainer import Trainer

    grids = []
    real = Trainer.write_samples
    monkeypatch.setattr(Trainer, "write_samples", lambda self, model, p: (grids.append(p.step), real(self, model, p)))
    r = train(tiny_cfg("optim.max_steps=12", "log.sample_every=6", "log.eval_every=4", "log.sample_count=4"))
    out = tmp_path / "run"
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step_00000006.png", "step_00000012.png"]
    assert grids == [6, 12]                              # the final step's grid is not sampled twice
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == r.metrics
    train_rows = [m for m in rows if "loss" in m]
    assert [m["step"] for m in train_rows] == list(range(1, 13))
    assert all(m["samples_per_s"] > 0 and math.isfinite(m["samples_per_s"]) for m in train_rows)
    evals = [(m["step"], m["eval_bpd"]) for m in rows if "eval_bpd" in m]
    assert [s for s, _ in evals] == [4, 8, 12]           # each eval_every, the final one not repeated
    assert evals[-1][1] == r.test_bpd and all(0 < b < 8 for _, b in evals)


def test_overflowed_samples_do_not_end_a_run(tiny_cfg, tmp_path, monkeypatch, capsys):
    # a sample grid with an overflowed (NaN) sample: the run finishes and says so in its log and metrics
    import warnings

    import starflow.sampling.sample as sampling
    from starflow.sampling.sample import NonFiniteSampleWarning

    real = sampling.sample

    def overflowing(*args, **kwargs):
        x = real(*args, **kwargs)
        x[0] = float("nan")
        warnings.warn("1 of 4 samples contain NaN or infinite values", NonFiniteSampleWarning)
        return x
    monkeypatch.setattr(sampling, "sample", overflowing)
    r = train(tiny_cfg("optim.max_steps=2", "log.sample_count=4", "log.progress=true", "log.sample_every=0"))
    assert r.steps == 2 and r.test_bpd is not None and (tmp_path / "run" / "samples" / "step_00000002.png").exists()
    assert [m["step"] for m in r.metrics if "sample_warning" in m] == [2]
    out = capsys.readouterr().out
    assert "step 2: samples in step_00000002.png: 1 of 4 samples" in out and "done: 2 steps" in out


def test_metric_rows_average_their_window(tiny_cfg, losses):
    every = train(tiny_cfg("optim.max_steps=5", out="every"))
    windows = train(tiny_cfg("optim.max_steps=5", "log.log_every=2", out="windows"))
    ls = losses(every)
    rows = [m for m in windows.metrics if "loss" in m]
    assert [m["step"] for m in rows] == [2, 4, 5]          # the last partial window is logged too
    assert [m["loss"] for m in rows] == pytest.approx([(ls[0] + ls[1]) / 2, (ls[2] + ls[3]) / 2, ls[4]],
                                                      rel=1e-6)
    assert rows[1]["lr"] == every.metrics[3]["lr"]        # lr: that of the window's last step


# ---- 4. the likelihood protocol -------------------------------------------------------------------------------

def test_heldout_bits_per_dim_is_the_protocol(tiny_cfg):
    from starflow.conditioning import load_text_encoder

    n, draws = 20, 3
    assert EVAL_SEED == 20250   # fixed, so that the figures of two runs compare directly
    r = train(tiny_cfg("optim.max_steps=3", f"log.eval_max_items={n}", f"log.eval_draws={draws}"))
    test = DigitsDataset("test")
    v, labels = test.get_batch(torch.arange(n)).values, test.labels[:n]
    y = load_text_encoder("labels:10", 1).encode(labels.tolist()).float()   # no dropout at evaluation
    per_draw = []
    with torch.no_grad():
        for d in range(draws):   # the evaluator's draws: one generator per (EVAL_SEED, draw, item), u first
            u = torch.cat([torch.rand((1, 1, 8, 8), generator=step_generator(20250, d, i)) for i in range(n)])
            x = (v.float() + u) * 2 / 17 - 1
            nats = nll(r.model, x, y).double()
            per_draw.append((nats - 64 * math.log(2 / 17)) / (64 * math.log(2)))
            torch.testing.assert_close(per_draw[-1], bits_per_dim(nats, 64, 2 / 17))
    bpd = torch.stack(per_draw)                                  # (draws, items)
    assert float(bpd.mean(1).std()) > 0                          # the draws differ...
    assert r.test_bpd == pytest.approx(float(bpd.mean()), abs=2e-5)  # ...and the figure is the mean over both
    assert r.test_bpd != pytest.approx(float(bpd[0].mean()), abs=1e-4)


def test_heldout_draws_do_not_depend_on_the_chunking(tiny_cfg):
    # an item's draws are keyed by its index: chunks of 7 or of 512 (and so any process count) see the same
    from starflow.training.evaluate import heldout_bpd

    tr = _trainer(tiny_cfg)
    tr.module.eval()
    run = (lambda chunk: heldout_bpd(tr.wrapped, tr.held_set, tr.pipe, tr.ctx, draws=2, chunk=chunk, max_items=20))
    assert run(7) == pytest.approx(run(512), rel=1e-12)


# ---- 5. latent space ------------------------------------------------------------------------------------------

def test_training_in_a_small_kl_latent_space(tiny_cfg, tmp_path, monkeypatch):
    from starflow.autoencoders import load_autoencoder
    from starflow.autoencoders.small_kl import SmallKLAutoencoder, SmallKLConfig
    import starflow.training.plots as plots

    torch.manual_seed(0)
    folder = SmallKLAutoencoder(SmallKLConfig(in_channels=1, latent_channels=3, hidden_channels=[8, 16])) \
        .save_pretrained(tmp_path / "ae")
    grids = []
    save_grid = plots.save_grid
    monkeypatch.setattr(plots, "save_grid", lambda x, path, *a, **k: grids.append(x) or save_grid(x, path, *a, **k))
    r = train(tiny_cfg("data.dequantize=false", "data.noise_std=0.3", f"data.autoencoder=kl:{folder}",
                       "optim.max_steps=2", "log.sample_every=2", "log.sample_count=4", "log.eval_max_items=16"))
    cfg = r.model.config
    assert (cfg.channel_size, cfg.img_size) == (3, 4)       # 3 latent channels at 8 / 2
    assert r.test_bpd is not None and math.isfinite(r.test_bpd)
    assert (tmp_path / "run" / "samples" / "step_00000002.png").exists()
    assert grids and grids[-1].shape == (4, 1, 8, 8) and torch.isfinite(grids[-1]).all()  # decoded to pixels
    # the inputs are the autoencoder's latents of the pixels, plus sigma * noise
    ae = load_autoencoder(f"kl:{folder}")
    train_set = DigitsDataset("train")
    cond = Conditioner("labels", "minilm", 1, train_set, CPU)
    pipe = InputPipeline(DataConfig(noise_std=0.3, autoencoder=f"kl:{folder}", condition="labels"), 0, cond, ae,
                         CPU, 0, 1)
    batch, draws = _batch_and_draws(pipe, train_set, n=8)
    assert pipe.item_shape(batch) == (3, 4, 4)
    z = ae.encode(to_unit_range(batch.values, batch.levels), sample=False)
    torch.testing.assert_close(pipe.make(batch, draws, 0.0).x, z + 0.3 * draws.noise, rtol=0, atol=1e-5)


@pytest.mark.gpu
def test_training_on_cuda_runs_under_bf16_autocast(tiny_cfg, monkeypatch):
    """One GPU: the trainer takes the CUDA device and, with bf16=auto, trains under CUDA bf16 autocast
    without the CPU probe."""
    monkeypatch.setattr(Trainer, "_probe_step_times", lambda self: pytest.fail("CPU probe on a GPU run"))
    tr = _trainer(tiny_cfg, "optim.precision=auto")
    assert tr.ctx.device.type == "cuda" and tr.autocast
    seen = []
    forward = TrainModule.forward

    def spy(self, x, y, denoise=False):
        seen.append((x.device.type, torch.is_autocast_enabled("cuda")))
        return forward(self, x, y, denoise)
    monkeypatch.setattr(TrainModule, "forward", spy)
    rows = [tr.train_step(Progress())[0] for _ in range(3)]
    assert seen[0] == ("cuda", True) and all(math.isfinite(r["loss"]) for r in rows)
