"""The page's functions without the page: the pipeline's own results, files, settings, one request at a time,
and a sentence for every bad input."""
import json
import threading
import time

import numpy as np
import pytest
from PIL import Image

from starflow.pipelines.likelihood import image_likelihood
from starflow.serve import InputError, ModelSession


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_text_to_image_is_the_pipelines_call_written_to_files(image_pipe, tmp_path):
    s = ModelSession(image_pipe, tmp_path, name="tiny")
    r = s.text_to_image("3", guidance=1.5, sampler="jacobi", jacobi_block_size=4, jacobi_threshold=1e-3, seed=7,
                        num_samples=3)
    direct = image_pipe("3", num_images_per_prompt=3, guidance=1.5, jacobi_block_size=4, jacobi_th=1e-3,
                        seed=7, output_type="np")                                       # (3, 8, 8, 1) in [0, 1]
    pngs = sorted(p for p in r.files if p.name.startswith("sample_"))
    assert len(pngs) == 3 and all(p.parent.parent == tmp_path for p in pngs)
    for png, want in zip(pngs, direct.images):
        got = _pixels(png)
        assert got.shape == (8, 8)                                                      # native size, grey
        assert np.abs(got.astype(int) - np.round(want[..., 0] * 255).astype(int)).max() <= 1
    # shown enlarged (nearest) so that 8x8 pictures can be seen; the grid is a download too
    assert len(r.images) == 3 and r.images[0].size == (256, 256)
    assert np.array_equal(np.asarray(r.images[0])[::32, ::32], _pixels(pngs[0]))
    assert any(p.name == "grid_x32.png" for p in r.files)
    settings = json.loads(next(p for p in r.files if p.name == "settings.json").read_text())
    assert settings["seed"] == 7 and settings["prompt"] == "3" and settings["Jacobi block size"] == 4
    md = r.info_markdown()
    assert "3 images of 8x8 px in" in md and "| seed | 7 |" in md and "| sampler | jacobi |" in md


def test_same_seed_same_images_and_random_seed_is_reported(image_pipe, tmp_path):
    s = ModelSession(image_pipe, tmp_path)
    a = s.text_to_image("5", seed=3)
    b = s.text_to_image("5", seed=3)
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
    c = s.text_to_image("5", seed=-1, sampler="sequential")
    assert c.settings["seed"] >= 0 and "Jacobi block size" not in c.settings
    again = s.text_to_image("5", seed=c.settings["seed"], sampler="sequential")
    assert np.array_equal(np.asarray(c.images[0]), np.asarray(again.images[0]))


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt=""), "type a prompt"),
    (dict(prompt="   "), "type a prompt"),
    (dict(prompt="seven"), "is not an integer"),                      # the label encoder's own sentence
    (dict(prompt="12"), "out of range"),
    (dict(prompt="3", num_samples=17), "between 1 and 16"),
    (dict(prompt="3", num_samples=1.5), "whole number"),
    (dict(prompt="3", seed="abc"), "seed must be a whole number"),
    (dict(prompt="3", guidance=-1), "guidance must be at least 0 and at most 100"),
    (dict(prompt="3", jacobi_threshold=-0.1), "Jacobi threshold \\(0: never stop early\\) must be at least 0"),
    (dict(prompt="3", jacobi_block_size=0), "Jacobi block size must be at least 1"),
    (dict(prompt="3", sampler="euler"), "sampler must be"),
])
def test_bad_image_requests_are_sentences(image_pipe, tmp_path, kwargs, message):
    s = ModelSession(image_pipe, tmp_path)
    with pytest.raises(InputError, match=message):
        s.text_to_image(**kwargs)
    assert s.text_to_image("3").images                              # and the session still serves


def test_aspect_ratio_only_where_positions_allow(pipe_factory, tmp_path):
    s = ModelSession(pipe_factory(), tmp_path)
    assert s.takes_aspect_ratio
    r = s.text_to_image("3", aspect_ratio="16:9")
    assert r.settings["size"] == "10x6 px" and r.settings["aspect ratio"] == "16:9"   # the area of 8x8
    assert s.text_to_image("3", aspect_ratio="1:1").settings["size"] == "8x8 px"
    learned = ModelSession(pipe_factory(rope=False), tmp_path)
    assert not learned.takes_aspect_ratio
    with pytest.raises(InputError, match="one size only"):
        learned.text_to_image("3", aspect_ratio="16:9")


def test_unconditional_model_takes_no_prompt(uncond_pipe, tmp_path):
    s = ModelSession(uncond_pipe, tmp_path)
    assert not s.conditioned and s.prompt_hint().startswith("unconditional")
    assert len(s.text_to_image(None, num_samples=2).images) == 2
    with pytest.raises(InputError, match="leave the prompt empty"):
        s.text_to_image("3")
    with pytest.raises(InputError, match="no negative prompt"):
        s.text_to_image("", negative_prompt="x")


def test_text_and_image_to_video(video_pipe, tmp_path):
    s = ModelSession(video_pipe, tmp_path)
    r = s.text_to_video("3", seed=0, num_samples=2, num_frames=4)
    assert r.video.suffix == ".mp4" and r.video.exists()
    gif = next(p for p in r.files if p.suffix == ".gif")
    frames = Image.open(gif)
    assert frames.n_frames == 4 and frames.size == ((2 * 8 + 3 * 2) * 32, (8 + 2 * 2) * 32)   # 2 videos, padded
    assert r.settings["frames"] == 4 and "2 videos of 4 frames, 8x8 px" in r.summary
    first = Image.fromarray((np.arange(400).reshape(20, 20) % 256).astype(np.uint8))   # any size: resized, cropped
    i2v = s.text_to_video("3", seed=0, num_frames=4, image=first, require_image=True)
    assert Image.open(next(p for p in i2v.files if p.suffix == ".gif")).size == (256, 256)   # one video: no frame
    assert "resized and centre-cropped to 8x8" in i2v.settings["first frame"]
    assert i2v.summary.startswith("1 image-to-video of 4 frames")


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt=""), "type a prompt"),
    (dict(prompt="3", require_image=True), "upload a first frame"),
    (dict(prompt="3", num_frames=0), "frames must be between 1"),
    (dict(prompt="3", num_samples=5), "between 1 and 4"),
    (dict(prompt="3", num_frames=6, sampler="sequential"), "sliding window"),   # the pipeline's own sentence
])
def test_bad_video_requests_are_sentences(video_pipe, tmp_path, kwargs, message):
    s = ModelSession(video_pipe, tmp_path)
    with pytest.raises(InputError, match=message):
        s.text_to_video(**kwargs)


def test_likelihood_matches_the_library_and_checks_size(image_pipe, tmp_path):
    s = ModelSession(image_pipe, tmp_path)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8))
    res, md = s.likelihood(img, "3")
    assert res.bits_per_dim == pytest.approx(image_likelihood(image_pipe, img, "3").bits_per_dim, rel=1e-6)
    assert "bits/dim** under the prompt `3`" in md and "unconditional (empty prompt)" in md
    assert "pixels" in md and "v / 127.5 - 1" in md
    with pytest.raises(InputError, match="is 9x8 pixels; this model scores 8x8"):
        s.likelihood(Image.new("L", (9, 8)), None)
    with pytest.raises(InputError, match="upload an image"):
        s.likelihood(None)


def test_latent_likelihood_says_per_latent_dimension(video_pipe, tmp_path):
    s = ModelSession(video_pipe, tmp_path)
    res, md = s.likelihood(Image.new("L", (8, 8), 128), None)
    assert res.space == "latents" and res.num_dims == 2 * 4 * 4 and res.bits_per_dim_8bit is None
    assert "per **latent** dimension" in md and "one-frame video" in md


class _Recorder:
    """Wraps a pipeline and records how many calls ran at once."""

    def __init__(self, pipe):
        self.pipe, self.active, self.most = pipe, 0, 0
        self.guard = threading.Lock()

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def __call__(self, *a, **kw):
        with self.guard:
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            time.sleep(0.2)               # long enough for the other thread to arrive
            return self.pipe(*a, **kw)
        finally:
            with self.guard:
                self.active -= 1


def test_requests_from_two_threads_run_one_at_a_time(image_pipe, tmp_path):
    rec = _Recorder(image_pipe)
    s = ModelSession(rec, tmp_path)
    results = []
    threads = [threading.Thread(target=lambda: results.append(s.text_to_image("1", seed=0))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and rec.most == 1
    assert len({r.files[0].parent for r in results}) == 2              # each request its own folder
