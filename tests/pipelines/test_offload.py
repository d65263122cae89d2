"""CPU offload: the text encoder and autoencoder are moved to the execution device only for their own calls."""
import itertools

import pytest
import torch


class _Recorder:
    """Wraps a component: records its moves and its calls (encode / null / decode) in one shared list."""

    def __init__(self, name: str, component, events: list):
        self.name, self.events = name, events
        move = component.to

        def to(*args, **kwargs):
            events.append((name, "to", str(torch.device(args[0] if args else kwargs["device"]))))
            return move(*args, **kwargs)
        component.to = to
        for method in ("encode", "null", "decode"):
            if hasattr(component, method):
                setattr(component, method, self._call(method, getattr(component, method)))

    def _call(self, method, fn):
        def call(*args, **kwargs):
            self.events.append((self.name, method))
            return fn(*args, **kwargs)
        return call


def _check_pairs(events, name, device):
    """Every call of `name` sits between a move to `device` and a move back to the CPU."""
    mine = [e for e in events if e[0] == name]
    where = "cpu"
    for e in mine:
        if e[1] == "to":
            where = "exec" if where == "cpu" else "cpu"
            assert e[2] == (str(device) if where == "exec" else "cpu"), mine
        else:
            assert where == "exec", mine
    assert where == "cpu" and any(e[1] != "to" for e in mine), mine


@pytest.mark.parametrize("kind", ["image", "video"])
def test_offload_moves_components_around_their_calls(kind, latent_image_pipe, video_pipe):
    pipe = latent_image_pipe if kind == "image" else video_pipe
    kw = dict(seed=0, progress=False, output_type="pt")
    if kind == "video":
        kw["num_frames"] = 5
    before = pipe(["3"], **kw)
    frames = getattr(before, "images", None)
    frames = before.frames if frames is None else frames
    events = []
    _Recorder("text_encoder", pipe.text_encoder, events)
    _Recorder("autoencoder", pipe.autoencoder, events)
    pipe(["3"], **kw)
    assert not any(e[1] == "to" for e in events)          # off by default: nothing moves
    events.clear()
    assert pipe.enable_cpu_offload("cpu") is pipe and pipe.cpu_offload == torch.device("cpu")
    assert events == [("text_encoder", "to", "cpu"), ("autoencoder", "to", "cpu")]   # they wait on the CPU
    events.clear()
    after = pipe(["3"], **kw)
    got = after.images if kind == "image" else after.frames
    torch.testing.assert_close(got, frames, atol=0, rtol=0)
    _check_pairs(events, "text_encoder", pipe.cpu_offload)
    _check_pairs(events, "autoencoder", pipe.cpu_offload)
    # the text encoder is back on the CPU before the autoencoder comes in: never both at once
    first_ae = next(i for i, e in enumerate(events) if e[0] == "autoencoder")
    assert events[first_ae - 1] == ("text_encoder", "to", "cpu")
    if kind == "video":                                    # image-to-video encodes the first frame too
        events.clear()
        pipe(["3"], image=torch.zeros(1, 8, 8), **kw)
        calls = [k for k, _ in itertools.groupby(e[1] for e in events if e[0] == "autoencoder")]
        assert calls == ["to", "encode", "to", "decode", "to"]     # (runs of one event merged: a video encodes per frame)
        _check_pairs(events, "autoencoder", pipe.cpu_offload)
    # pipe.to puts everything on one device again
    pipe.to("cpu")
    assert pipe.cpu_offload is None
    events.clear()
    pipe(["3"], **kw)
    assert not any(e[1] == "to" for e in events)


def test_offload_for_editing_and_likelihood(latent_image_pipe, tmp_path):
    from PIL import Image

    from starflow.pipelines.likelihood import image_likelihood

    pipe = latent_image_pipe
    path = tmp_path / "p.png"
    Image.fromarray((torch.arange(64).reshape(8, 8) * 3).numpy().astype("uint8")).save(path)
    want = image_likelihood(pipe, path, "3").bits_per_dim
    events = []
    _Recorder("text_encoder", pipe.text_encoder, events)
    _Recorder("autoencoder", pipe.autoencoder, events)
    pipe.enable_cpu_offload("cpu")
    events.clear()
    assert image_likelihood(pipe, path, "3").bits_per_dim == want
    _check_pairs(events, "text_encoder", pipe.cpu_offload)
    _check_pairs(events, "autoencoder", pipe.cpu_offload)
    pipe.disable_cpu_offload()
    assert pipe.cpu_offload is None


def test_offload_needs_the_device():
    from starflow.pipelines.offload import OffloadMixin
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ValueError, match="no CUDA device"):
        OffloadMixin().enable_cpu_offload("cuda")


@pytest.mark.gpu
def test_offload_on_cuda(latent_image_pipe):
    pipe = latent_image_pipe
    kw = dict(seed=0, progress=False, output_type="pt")
    want = pipe(["3"], **kw).images
    pipe.enable_cpu_offload("cuda")
    got = pipe(["3"], **kw).images
    assert next(pipe.flow.parameters()).device.type == "cuda" and pipe.text_encoder.device.type == "cpu"
    torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-4)
