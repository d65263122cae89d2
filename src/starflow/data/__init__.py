"""Datasets for training: bundled digits, moving digits, image and video folders; aspect-ratio buckets."""
from .base import Batch, InMemoryDataset, QuantizedDataset, Subset, dequantize, to_unit_range
from .buckets import BatchSampler, aspect_ratio_to_image_size, nearest_bucket, parse_ratio
from .digits import DIGITS_LEVELS, DIGITS_TEST_SIZE, DigitsDataset, digit_caption, digits_split
from .folders import ImageFolderDataset, VideoFolderDataset, read_captions
from .moving_digits import DIRECTIONS, MovingDigitsDataset, moving_caption, render_moving_digit

__all__ = ["Batch", "QuantizedDataset", "InMemoryDataset", "Subset", "dequantize", "to_unit_range", "BatchSampler",
           "aspect_ratio_to_image_size", "nearest_bucket", "parse_ratio", "DIGITS_LEVELS", "DIGITS_TEST_SIZE",
           "DigitsDataset", "digit_caption", "digits_split", "ImageFolderDataset", "VideoFolderDataset",
           "read_captions", "DIRECTIONS", "MovingDigitsDataset", "moving_caption", "render_moving_digit"]
