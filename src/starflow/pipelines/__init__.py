"""Pipelines: prompts (and first frames) to pictures and videos, with our models or the official ones."""
from .base import BasePipeline
from .image import ImagePipelineOutput, StarFlowPipeline
from ..data.media import load_image, make_grid, save_image, save_image_grid, save_video, video_grid
from .spec import ASPECT_RATIOS, PipelineDefaults, PipelineSpec, aspect_ratio_to_size, read_spec
from .video import StarFlowVideoPipeline, VideoPipelineOutput


def load_pipeline(directory, **kwargs):
    """A pipeline directory (`pipeline.json`) -> StarFlowPipeline or StarFlowVideoPipeline, by its kind."""
    return BasePipeline.from_pretrained(directory, **kwargs)


__all__ = ["BasePipeline", "StarFlowPipeline", "StarFlowVideoPipeline", "ImagePipelineOutput", "VideoPipelineOutput",
           "PipelineDefaults", "PipelineSpec", "ASPECT_RATIOS", "aspect_ratio_to_size", "read_spec", "load_pipeline",
           "save_image", "save_image_grid", "save_video", "make_grid", "video_grid", "load_image"]
