"""Training and sampling on a shared CPU: how much slower with another 2-thread PyTorch job running?

    python benchmarks/shared_cpu.py [--steps 60] [--json out.json]

Times, each in a fresh process (the OpenMP settings are read when torch starts):
- a short digits training run (configs/digits_t2i.yaml, `--steps` steps, no evaluation, samples or plots)
  and a batch of Jacobi samples from the bench model,
- alone, and beside a competing job (another process doing 2-thread float32 matmuls for as long as the
  timed run lasts, then stopping),
- with starflow's default (the thread count fitted to the cores other processes leave free, starflow._cpu)
  and with a fixed count (torch's default, STARFLOW_ADAPT_THREADS=0: the behaviour before).
Prints the slowdowns (shared / alone). Needs an otherwise idle machine: run nothing else meanwhile.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPETITOR = """
import sys, time, torch
torch.set_num_threads(2)
a = torch.randn(768, 768)
end = time.time() + float(sys.argv[1])
while time.time() < end:      # bounded: it stops by itself
    a = torch.tanh(a @ a) * 0.5
"""
TRAIN = """
import sys, time
from starflow.cli.main import main
t0 = time.perf_counter()
rc = main(["train", "--config", sys.argv[1], "log.out_dir=" + sys.argv[2], "optim.max_steps=" + sys.argv[3],
           *sys.argv[4:], "optim.warmup_steps=5", "log.progress=false", "log.sample_every=-1", "log.plot=false",
           "data.eval_split=false"])
print("SECONDS", time.perf_counter() - t0)
"""
SAMPLE = """
import sys, time, torch
from starflow.evaluation.bench import load_bench_model
from starflow.sampling.sample import sample
t_start = time.perf_counter()
model = load_bench_model(sys.argv[1])
c = model.config
g = torch.Generator().manual_seed(0)
z = torch.randn(4, c.channel_size, c.img_size, c.img_size, generator=g)
y = torch.randn(4, c.txt_size, c.txt_dim, generator=g)
t0 = time.perf_counter()
for _ in range(int(sys.argv[2])):
    sample(model, z, y, torch.zeros_like(y), guidance=2.0, jacobi_block_size=16, jacobi_schedule="sliding")
print("SECONDS", time.perf_counter() - t0)
"""


def _run(code: str, args: list[str], env: dict, competing: bool, budget: float) -> float:
    comp = None
    if competing:
        comp = subprocess.Popen([sys.executable, "-c", COMPETITOR, str(budget)], env=os.environ.copy())
        time.sleep(2.0)                                   # let it start multiplying
    try:
        out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                             timeout=budget + 60, cwd=ROOT)
    finally:
        if comp is not None:
            comp.kill()
            comp.wait()
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return float(next(ln.split()[1] for ln in out.stdout.splitlines() if ln.startswith("SECONDS")))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--samples", type=int, default=3, help="Jacobi sampling calls on the bench model")
    p.add_argument("--bench-model", default=str(ROOT.parent / "shared" / "bench" / "bench_t2i_small.pt"))
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    res: dict = {"cpu": os.cpu_count(), "steps": args.steps}
    with tempfile.TemporaryDirectory() as tmp:
        for policy in ("adaptive", "fixed"):
            env = os.environ.copy()
            if policy == "fixed":
                env["STARFLOW_ADAPT_THREADS"] = "0"
            for what, code, argv in (
                    ("train", TRAIN, [str(ROOT / "configs" / "digits_t2i.yaml"), f"{tmp}/run", str(args.steps),
                                      "optim.num_threads=null"]),
                    ("sample", SAMPLE, [args.bench_model, str(args.samples)])):
                runs = []
                for competing in (False, True):     # each training run in a folder of its own: no resuming
                    a = [f"{tmp}/{policy}-{what}-{competing}" if x == f"{tmp}/run" else x for x in argv]
                    runs.append(_run(code, a, env, competing, 900 if not competing else 4 * runs[0] + 30))
                alone, shared = runs
                res[f"{what}_{policy}"] = {"alone_s": round(alone, 2), "shared_s": round(shared, 2),
                                           "slowdown": round(shared / alone, 2)}
                print(what, policy, res[f"{what}_{policy}"], flush=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
