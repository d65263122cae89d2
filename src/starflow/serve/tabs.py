"""The page's tabs, one small function each, chosen by what the model can do.

A tab function builds its controls inside `gr.Tab`, and wires one button to a `ModelSession` method through
`wire` (errors become messages on the page, every model call shares one queue). To add a tab (inpainting,
editing, video-to-video...): write `def my_tab(s: ModelSession) -> None` the same way, calling the pipeline's
public entry point through a session method, and append `Tab("my_tab", available, my_tab)` to `TABS`.
"""
from __future__ import annotations

import functools
import html
import logging
from dataclasses import dataclass
from typing import Callable

import gradio as gr

from ..pipelines.spec import ASPECT_RATIOS
from .session import InputError, ModelSession

__all__ = ["Tab", "TABS", "wire", "page_errors", "MODEL_QUEUE"]

log = logging.getLogger("starflow.serve")
MODEL_QUEUE = "model"      # one concurrency group for every event that runs the model: one request at a time


@dataclass(frozen=True)
class Tab:
    name: str                                    # also the API name of its button
    available: Callable[[ModelSession], bool]    # does the model do this?
    build: Callable[[ModelSession], None]        # builds the tab (inside gr.Blocks)


def page_errors(fn):
    """A user's mistake -> its sentence on the page (escaped: the page renders HTML); anything else -> a short
    message there and the traceback in the server's log. Never a stack trace on the page; the server keeps serving."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except InputError as e:
            raise gr.Error(html.escape(str(e), quote=False), title="Please check the input") from None
        except Exception as e:  # noqa: BLE001 - the page must stay up whatever the model does
            log.exception("request failed")
            raise gr.Error(html.escape(f"the model failed on this request ({type(e).__name__}: {e}); the server "
                                       "log has the details", quote=False), title="Error") from None
    return wrapped


def wire(button: gr.Button, fn, inputs: list, outputs: list, api_name: str) -> None:
    button.click(page_errors(fn), inputs=inputs, outputs=outputs, api_name=api_name, concurrency_id=MODEL_QUEUE,
                 concurrency_limit=1, show_progress="full")


# ---- shared controls ----------------------------------------------------------------------------------
def _prompt_boxes(s: ModelSession, key: str, required: bool = True) -> list:
    labels = s.labels is not None
    prompt = gr.Textbox(label="class" if labels else "prompt", placeholder=s.prompt_hint(), lines=1 if labels else 2,
                        visible=s.conditioned, elem_id=f"{key}-prompt",
                        info=None if required else "optional: empty scores under the empty prompt")
    return [prompt]


def _sampling_controls(s: ModelSession, key: str, max_n: int | None, what: str) -> list:
    """negative prompt, guidance, sampler, Jacobi block size and threshold, seed, number of samples (unless
    max_n is None: one picture in, one out)."""
    d = s.pipe.defaults.sampling
    negative = gr.Textbox(label="negative prompt", placeholder="replaces the empty prompt of the guidance branch",
                          visible=s.conditioned, elem_id=f"{key}-negative")
    guidance = gr.Slider(0.0, 10.0, value=d.guidance, step=0.1, label="guidance", visible=s.conditioned,
                         info="classifier-free guidance weight (0: none)")
    with gr.Row():
        sampler = gr.Radio(["jacobi", "sequential"], value=d.method, label="sampler",
                           info="Jacobi: parallel blocks; sequential: token by token (exact)")
        seed = gr.Number(value=0, precision=0, label="seed", info="-1: a new random seed")
    with gr.Row():
        block = gr.Number(value=d.jacobi_block_size, precision=0, minimum=1, label="Jacobi block size")
        threshold = gr.Number(value=d.jacobi_th, minimum=0, label="Jacobi threshold",
                              info="0: never stop early")
    controls = [negative, guidance, sampler, block, threshold, seed]
    if max_n is not None:
        controls.append(gr.Slider(1, max_n, value=1, step=1, label=f"number of {what}"))
    return controls


def _aspect_control(s: ModelSession, key: str) -> gr.Dropdown:
    default = s.pipe.defaults.aspect_ratio or "1:1"
    return gr.Dropdown(list(ASPECT_RATIOS), value=default, label="aspect ratio", visible=s.takes_aspect_ratio,
                       elem_id=f"{key}-aspect", info="same area as the trained size")


def _result_column(key: str, video: bool):
    shown = (gr.Video(label="video", elem_id=f"{key}-video", autoplay=True, loop=True) if video else
             gr.Gallery(label="images", elem_id=f"{key}-gallery", columns=4, object_fit="contain", height="auto",
                        format="png"))
    info = gr.Markdown(label="settings", elem_id=f"{key}-info")
    files = gr.File(label="downloads", file_count="multiple", elem_id=f"{key}-files")
    return shown, info, files


def _files(r) -> list[str]:
    return [str(f) for f in r.files]


# ---- tabs -----------------------------------------------------------------------------------------------
def text_to_image_tab(s: ModelSession) -> None:
    key = "t2i"
    with gr.Tab("Text to image" if s.conditioned else "Sample images", id=key):
        with gr.Row():
            with gr.Column():
                inputs = _prompt_boxes(s, key) + _sampling_controls(s, key, s.max_samples, "images")
                inputs.append(_aspect_control(s, key))
                button = gr.Button("Generate", variant="primary", elem_id=f"{key}-generate")
            with gr.Column():
                gallery, info, files = _result_column(key, video=False)

    def run(prompt, negative_prompt, guidance, sampler, jacobi_block_size, jacobi_threshold, seed, num_samples,
            aspect_ratio, progress=gr.Progress(track_tqdm=True)):
        progress(0, desc="sampling")
        r = s.text_to_image(prompt, negative_prompt, guidance, sampler, jacobi_block_size, jacobi_threshold, seed,
                            num_samples, aspect_ratio)
        return r.images, r.info_markdown(), _files(r)

    wire(button, run, inputs, [gallery, info, files], "text_to_image")


def _video_tab(s: ModelSession, key: str, title: str, first_frame: bool) -> None:
    d = s.pipe.defaults
    with gr.Tab(title, id=key):
        with gr.Row():
            with gr.Column():
                image = [gr.Image(type="pil", image_mode=None, label="first frame", elem_id=f"{key}-image",
                                  sources=["upload", "clipboard"], height=280)] if first_frame else []
                inputs = image + _prompt_boxes(s, key) + _sampling_controls(s, key, s.max_videos, "videos")
                with gr.Row():
                    frames = gr.Number(value=d.num_frames, precision=0, label="frames",
                                       info="pixel frames; past the trained length a sliding window (Jacobi)")
                    fps = gr.Number(value=d.fps or 8, precision=0, label="fps")
                inputs += [frames, fps, _aspect_control(s, key)]
                button = gr.Button("Generate", variant="primary", elem_id=f"{key}-generate")
            with gr.Column():
                video_out, info, files = _result_column(key, video=True)

    def video(first, prompt, negative, guidance, sampler, block, threshold, seed, n, frames_, fps_, aspect):
        r = s.text_to_video(prompt, negative, guidance, sampler, block, threshold, seed, n, frames_, fps_,
                            image=first, aspect_ratio=aspect, require_image=first_frame)
        return str(r.video), r.info_markdown(), _files(r)

    # explicit parameters: they name the API's arguments (gradio_client, the page's "Use via API")
    if first_frame:
        def run(first_frame, prompt, negative_prompt, guidance, sampler, jacobi_block_size, jacobi_threshold, seed,
                num_samples, num_frames, fps, aspect_ratio, progress=gr.Progress(track_tqdm=True)):
            progress(0, desc="sampling")
            return video(first_frame, prompt, negative_prompt, guidance, sampler, jacobi_block_size,
                         jacobi_threshold, seed, num_samples, num_frames, fps, aspect_ratio)
    else:
        def run(prompt, negative_prompt, guidance, sampler, jacobi_block_size, jacobi_threshold, seed, num_samples,
                num_frames, fps, aspect_ratio, progress=gr.Progress(track_tqdm=True)):
            progress(0, desc="sampling")
            return video(None, prompt, negative_prompt, guidance, sampler, jacobi_block_size, jacobi_threshold,
                         seed, num_samples, num_frames, fps, aspect_ratio)

    wire(button, run, inputs, [video_out, info, files], key)


def text_to_video_tab(s: ModelSession) -> None:
    _video_tab(s, "text_to_video", "Text to video" if s.conditioned else "Sample videos", first_frame=False)


def image_to_video_tab(s: ModelSession) -> None:
    _video_tab(s, "image_to_video", "Image to video", first_frame=True)


def likelihood_tab(s: ModelSession) -> None:
    key = "likelihood"
    H, W = s.default_size()
    space = ("pixels mapped to [-1, 1]" if s.pipe.autoencoder is None else
             "the autoencoder's latents of the picture (bits per latent dimension)")
    with gr.Tab("Likelihood", id=key):
        gr.Markdown(f"The exact likelihood of an uploaded picture under the model, in bits per dimension: the flow "
                    f"is invertible, so -log p(x) is computed, not bounded. This model scores {W}x{H} px pictures "
                    f"as {space}" + (", as a one-frame video" if s.kind == "video" else "") + ".")
        with gr.Row():
            with gr.Column():
                upload = gr.Image(type="pil", image_mode=None, label="image", elem_id=f"{key}-image",
                                  sources=["upload", "clipboard"], height=280)
                inputs = [upload] + _prompt_boxes(s, key, required=False)
                inputs.append(gr.Checkbox(False, label=f"resize and centre-crop to {W}x{H}",
                                          info="otherwise another size is refused"))
                button = gr.Button("Compute bits/dim", variant="primary", elem_id=f"{key}-compute")
            with gr.Column():
                bpd = gr.Number(label="bits/dim", precision=4, interactive=False, elem_id=f"{key}-bpd")
                info = gr.Markdown(label="details", elem_id=f"{key}-info")

    def run(image, prompt, resize, progress=gr.Progress()):
        progress(0, desc="scoring")
        res, text = s.likelihood(image, prompt, bool(resize))
        return res.bits_per_dim, text

    wire(button, run, inputs, [bpd, info], "likelihood")


def _painted(editor) -> tuple[object, object]:
    """An ImageEditor's value -> (the picture, the painted region as a boolean array, or None)."""
    import numpy as np

    if not editor or editor.get("background") is None:
        return None, None
    layers = [np.asarray(layer.convert("RGBA"))[..., 3] > 0 for layer in editor.get("layers") or [] if layer is not None]
    painted = np.any(layers, axis=0) if layers else None
    return editor["background"], (painted if painted is not None and painted.any() else None)


def _picture_inputs(s: ModelSession, key: str):
    """The picture (an editor to paint the region on, for images; a video upload for videos), a mask upload
    and a box."""
    if s.kind == "video":
        picture = gr.Video(label="video (GIF / MP4, the model's size)", elem_id=f"{key}-video", sources=["upload"])
    else:
        picture = gr.ImageEditor(type="pil", label="picture: paint the region to change", elem_id=f"{key}-picture",
                                 sources=["upload", "clipboard"], height=320)
    mask = gr.Image(type="pil", image_mode="L", label="or a mask (white = change)", elem_id=f"{key}-mask",
                    sources=["upload"], height=160)
    box = gr.Textbox(label="or a box x0,y0,x1,y1 (pixels)", elem_id=f"{key}-box")
    return picture, mask, box


def _split_picture(s: ModelSession, picture, mask):
    if s.kind == "video":
        return picture, mask
    background, painted = _painted(picture)
    if painted is not None and mask is not None:
        raise InputError("give either a painted region or an uploaded mask, not both")
    return background, (painted if painted is not None else mask)


def inpaint_tab(s: ModelSession) -> None:
    key = "inpaint"
    with gr.Tab("Inpaint", id=key):
        with gr.Row():
            with gr.Column():
                picture, mask, box = _picture_inputs(s, key)
                inputs = [picture, mask, box] + _prompt_boxes(s, key) + _sampling_controls(s, key, None, "pictures")
                inputs.append(gr.Slider(1, 32, value=8, step=1, label="iterations",
                                        info="rounds in the flow's noise space"))
                button = gr.Button("Fill", variant="primary", elem_id=f"{key}-run")
            with gr.Column():
                shown, info, files = _result_column(key, video=s.kind == "video")

    def run(picture, mask, box, prompt, negative_prompt, guidance, sampler, jacobi_block_size, jacobi_threshold,
            seed, iterations, progress=gr.Progress(track_tqdm=True)):
        progress(0, desc="inpainting")
        pic, region = _split_picture(s, picture, mask)
        r = s.inpaint(pic, region, box, prompt, negative_prompt, guidance, sampler, jacobi_block_size,
                      jacobi_threshold, seed, iterations)
        return (str(r.video) if r.video else r.images), r.info_markdown(), _files(r)

    wire(button, run, inputs, [shown, info, files], "inpaint")


def edit_tab(s: ModelSession) -> None:
    key = "edit"
    video = s.kind == "video"
    # on a video model, strength 0 is video-to-video (pipe(video=...) is the same call): the default there
    with gr.Tab("Edit (video to video)" if video else "Edit", id=key):
        with gr.Row():
            with gr.Column():
                picture, mask, box = _picture_inputs(s, key)
                prompt = _prompt_boxes(s, key)
                source = gr.Textbox(label="what the picture shows (source prompt)", elem_id=f"{key}-source",
                                    visible=s.conditioned, info="empty: the new prompt")
                strength = gr.Slider(0.0, 1.0, value=0.0 if video else 0.8, step=0.05, label="strength",
                                     info="0: the picture's own noise (video to video: same motion, new prompt), "
                                          "1: fresh noise")
                inputs = ([picture, mask, box] + prompt + [source, strength]
                          + _sampling_controls(s, key, None, "pictures"))
                button = gr.Button("Edit", variant="primary", elem_id=f"{key}-run")
            with gr.Column():
                shown, info, files = _result_column(key, video=s.kind == "video")

    def run(picture, mask, box, prompt, source_prompt, strength, negative_prompt, guidance, sampler,
            jacobi_block_size, jacobi_threshold, seed, progress=gr.Progress(track_tqdm=True)):
        progress(0, desc="editing")
        pic, region = _split_picture(s, picture, mask)
        r = s.edit(pic, prompt, source_prompt, strength, region, box, negative_prompt, guidance, sampler,
                   jacobi_block_size, jacobi_threshold, seed)
        return (str(r.video) if r.video else r.images), r.info_markdown(), _files(r)

    wire(button, run, inputs, [shown, info, files], "edit")


TABS: list[Tab] = [
    Tab("text_to_image", lambda s: s.kind == "image", text_to_image_tab),
    Tab("text_to_video", lambda s: s.kind == "video", text_to_video_tab),
    Tab("image_to_video", lambda s: s.kind == "video", image_to_video_tab),
    Tab("inpaint", lambda s: True, inpaint_tab),
    Tab("edit", lambda s: True, edit_tab),
    Tab("likelihood", lambda s: True, likelihood_tab),
]
