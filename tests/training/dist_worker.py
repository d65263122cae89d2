"""Run by tests under torchrun: several training jobs in one process group, losses written by rank 0.

    torchrun --nproc_per_node 2 dist_worker.py JOBS.json
JOBS.json: [{"name": ..., "overrides": [...]}, ...]; writes <name>.json next to it: {"losses": [...], "steps": [...]}
"""
import json
import sys
from pathlib import Path

import torch.distributed as dist

from starflow.training import load_train_config, train


def main(path: str) -> None:
    jobs = json.loads(Path(path).read_text())
    dist.init_process_group("gloo")  # owned here, so train() keeps it between jobs
    for job in jobs:
        r = train(load_train_config(None, job["overrides"]))
        if dist.get_rank() == 0:
            rows = [m for m in r.metrics if "loss" in m]
            out = {"losses": [m["loss"] for m in rows], "steps": [m["step"] for m in rows], "test_bpd": r.test_bpd}
            (Path(path).parent / f"{job['name']}.json").write_text(json.dumps(out))
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
