"""The page served on 127.0.0.1 and driven through its API (gradio_client), every tab, bad inputs included."""
import threading
import time

import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from starflow.pipelines.likelihood import image_likelihood
from starflow.serve import ModelSession

IMAGE_ARGS = dict(negative_prompt="", guidance=1.5, sampler="jacobi", jacobi_block_size=4, jacobi_threshold=1e-3,
                  seed=0, num_samples=2, aspect_ratio="1:1")
VIDEO_ARGS = dict(negative_prompt="", guidance=1.0, sampler="jacobi", jacobi_block_size=4, jacobi_threshold=1e-3,
                  seed=0, num_samples=1, num_frames=4, fps=4, aspect_ratio="1:1")


def _endpoints(client) -> set[str]:
    return set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])


def _png(tmp_path, arr, name="in.png"):
    path = tmp_path / name
    Image.fromarray(arr).save(path)
    return handle_file(str(path))


def test_image_app_tabs_are_what_the_model_does(image_app):
    _, app, client = image_app
    assert _endpoints(client) == {"/text_to_image", "/inpaint", "/edit", "/likelihood"}
    assert app.session.out_dir.is_dir()


def test_text_to_image_through_the_api(image_app):
    pipe, _, client = image_app
    gallery, settings, files = client.predict("3", **IMAGE_ARGS, api_name="/text_to_image")
    assert len(gallery) == 2
    shown = np.asarray(Image.open(gallery[0]["image"]))
    assert shown.shape[:2] == (256, 256)
    want = pipe("3", num_images_per_prompt=2, guidance=1.5, jacobi_block_size=4, seed=0, output_type="np").images
    assert np.abs(shown[::32, ::32].astype(int) - np.round(want[0, ..., 0] * 255)).max() <= 1
    assert "2 images of 8x8 px in" in settings and "| seed | 0 |" in settings
    assert sorted(p.rsplit("/", 1)[1] for p in files) == ["grid_x32.png", "sample_00.png", "sample_01.png",
                                                        "settings.json"]


def test_bad_inputs_are_messages_and_the_server_keeps_serving(image_app, tmp_path):
    _, _, client = image_app
    for prompt, args, message in [("", {}, "type a prompt: this model is text conditioned"),
                                  ("seven", {}, "class label 'seven' is not an integer"),
                                  ("3", dict(num_samples=40), "greater than maximum value 16"),   # gradio's slider
                                  ("3", dict(jacobi_threshold=-1), "less than minimum value 0")]:   # gradio's
        with pytest.raises(AppError, match=message) as err:
            client.predict(prompt, **{**IMAGE_ARGS, **args}, api_name="/text_to_image")
        assert "Traceback" not in str(err.value)
    with pytest.raises(AppError, match="the image is 10x8 pixels; this model scores 8x8 images"):
        client.predict(_png(tmp_path, np.zeros((8, 10), np.uint8)), "3", False, api_name="/likelihood")
    gallery, _, _ = client.predict("4", **IMAGE_ARGS, api_name="/text_to_image")
    assert len(gallery) == 2


def test_likelihood_through_the_api(image_app, tmp_path):
    pipe, _, client = image_app
    arr = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    bpd, details = client.predict(_png(tmp_path, arr), "3", False, api_name="/likelihood")
    want = image_likelihood(pipe, Image.fromarray(arr), "3").bits_per_dim
    assert bpd == pytest.approx(want, abs=1e-4)                      # the page rounds to 4 decimals
    assert f"{want:.4f} bits/dim" in details and "8-bit pixel values" in details
    big = np.kron(arr, np.ones((4, 4), np.uint8))                      # 32x32: accepted when asked to resize
    bpd_resized, details = client.predict(_png(tmp_path, big, "big.png"), "", True, api_name="/likelihood")
    assert "empty prompt (unconditional)" in details and np.isfinite(bpd_resized)


def test_video_app_every_tab(video_app, tmp_path):
    pipe, _, client = video_app
    assert _endpoints(client) == {"/text_to_video", "/image_to_video", "/inpaint", "/edit", "/likelihood"}
    video, settings, files = client.predict("3", **VIDEO_ARGS, api_name="/text_to_video")
    assert video.endswith(".mp4") and "1 video of 4 frames, 8x8 px" in settings
    assert {p.rsplit(".", 1)[1] for p in files} == {"mp4", "gif", "json"}
    first = _png(tmp_path, (np.arange(144).reshape(12, 12) * 1.7).astype(np.uint8))
    video, settings, _ = client.predict(first, "3", **VIDEO_ARGS, api_name="/image_to_video")
    assert "1 image-to-video of 4 frames" in settings and "uploaded 12x12, resized and centre-cropped" in settings
    with pytest.raises(AppError, match="upload a first frame"):
        client.predict(None, "3", **VIDEO_ARGS, api_name="/image_to_video")
    # past the trained length both samplers slide the attention window
    video, settings, _ = client.predict("3", **{**VIDEO_ARGS, "num_frames": 6, "sampler": "sequential"},
                                        api_name="/text_to_video")
    assert video.endswith(".mp4") and "1 video of 6 frames" in settings
    bpd, details = client.predict(_png(tmp_path, np.full((8, 8), 90, np.uint8)), "", False, api_name="/likelihood")
    assert np.isfinite(bpd) and "per **latent** dimension" in details
    from starflow.data.media import save_video
    gif = save_video((np.random.default_rng(1).random((4, 8, 8, 1)) * 255).astype(np.uint8), tmp_path / "v.mp4", fps=4)
    video, settings, _ = client.predict(handle_file(str(gif)), None, "0,4,8,8", "3",
                                        **{k: v for k, v in VIDEO_ARGS.items() if k not in
                                           ("num_samples", "num_frames", "fps", "aspect_ratio")},
                                        iterations=1, api_name="/inpaint")
    assert video.endswith(".mp4") and "inpaint: a video of 4 frames, 8x8 px" in settings
    # video to video: the Edit tab at strength 0 (its default on a video model) is pipe(video=...)
    video, settings, _ = client.predict(handle_file(str(gif)), None, "", "5", "3", 0.0,
                                        **{k: v for k, v in VIDEO_ARGS.items() if k not in
                                           ("num_samples", "num_frames", "fps", "aspect_ratio")},
                                        api_name="/edit")
    assert video.endswith(".mp4") and "edit: a video of 4 frames, 8x8 px" in settings and "strength" in settings


class _Recording(ModelSession):
    """Records how many requests run at once, without the session's own lock: only the page's queue keeps
    them apart. `fail` makes the next request crash the way a bug in the model would."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.active, self.most, self.fail = 0, 0, False
        self.guard = threading.Lock()

    def _run(self, fn):
        with self.guard:
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            time.sleep(0.5)                    # long enough for the other request to arrive
            if self.fail:
                self.fail = False
                raise RuntimeError("boom")
            return fn(), 0.5
        finally:
            with self.guard:
                self.active -= 1


def test_two_requests_at_once_are_queued_and_crashes_are_messages(image_pipe, tmp_path, serve_app):
    s = _Recording(image_pipe, tmp_path, name="recording")
    _, client = serve_app(s, tmp_path)
    picture = _png(tmp_path, np.full((8, 8), 200, np.uint8))
    jobs = [client.submit("1", **IMAGE_ARGS, api_name="/text_to_image"),
            client.submit(picture, "1", False, api_name="/likelihood"),
            client.submit("2", **IMAGE_ARGS, api_name="/text_to_image")]
    results = [j.result(timeout=120) for j in jobs]
    assert s.most == 1                                          # one at a time, across tabs
    assert len(results[0][0]) == 2 and np.isfinite(results[1][0]) and len(results[2][0]) == 2
    s.fail = True
    with pytest.raises(AppError, match=r"the model failed on this request \(RuntimeError: boom\)") as err:
        client.predict("3", **IMAGE_ARGS, api_name="/text_to_image")
    assert "Traceback" not in str(err.value)
    assert len(client.predict("3", **IMAGE_ARGS, api_name="/text_to_image")[0]) == 2     # still serving


SAMPLING = dict(negative_prompt="", guidance=1.5, sampler="jacobi", jacobi_block_size=4, jacobi_threshold=1e-3,
                seed=0)


def _editor(tmp_path, picture, painted=None):
    """An ImageEditor value as the API takes it: the picture, and a layer painted where `painted` is True."""
    layers = []
    if painted is not None:
        rgba = np.zeros((*painted.shape, 4), np.uint8)
        rgba[painted] = 255
        layers = [_png(tmp_path, rgba, "layer.png")]
    return {"background": _png(tmp_path, picture, "picture.png"), "layers": layers, "composite": None}


def test_inpaint_and_edit_through_the_api(image_app, tmp_path):
    _, _, client = image_app
    picture = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
    lower = np.zeros((8, 8), bool)
    lower[4:] = True
    gallery, settings, files = client.predict(_editor(tmp_path, picture, lower), None, "", "3", **SAMPLING,
                                               iterations=2, api_name="/inpaint")
    shown = np.asarray(Image.open(gallery[0]["image"]))[::32, ::32]
    assert np.array_equal(shown[:4], picture[:4])            # the known upper half, byte for byte
    assert "inpaint: a 8x8 px picture" in settings and "| iterations | 2 |" in settings
    gallery, settings, _ = client.predict(_editor(tmp_path, picture), None, "0,4,8,8", "3", **SAMPLING,
                                          iterations=1, api_name="/inpaint")
    assert "| region | box (0, 4, 8, 8) |" in settings
    gallery, settings, _ = client.predict(_editor(tmp_path, picture), None, "", "7", "3", 0.7, **SAMPLING,
                                          api_name="/edit")
    assert "| strength | 0.7 |" in settings and "| source prompt | 3 |" in settings
    for args, message in [((_editor(tmp_path, picture), None, ""), "paint the region to fill"),
                          ((_editor(tmp_path, picture), None, "1,2"), "expected four integers"),
                          ((_editor(tmp_path, picture), None, "0,0,9,9"), "not inside the 8x8 picture"),
                          ((None, None, "0,0,2,2"), "upload the picture")]:
        with pytest.raises(AppError, match=message) as err:
            client.predict(*args, "3", **SAMPLING, iterations=1, api_name="/inpaint")
        assert "Traceback" not in str(err.value)
    with pytest.raises(AppError, match="does not fit the model"):
        client.predict(_editor(tmp_path, np.zeros((8, 9), np.uint8)), None, "0,0,2,2", "3", **SAMPLING,
                       iterations=1, api_name="/inpaint")
