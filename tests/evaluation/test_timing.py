import torch

from starflow.evaluation.timing import interleaved


def test_interleaved_takes_turns_reversing_the_order_every_other_round():
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in ("a", "b", "c")}
    times = interleaved(fns, torch.device("cpu"), warmup=1, repeats=3)
    # warm-up once each, then rounds a b c / c b a / a b c
    assert calls == ["a", "b", "c"] + ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert set(times) == {"a", "b", "c"} and all(len(v) == 3 and min(v) >= 0 for v in times.values())
