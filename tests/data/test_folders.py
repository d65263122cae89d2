import json

import numpy as np
import pytest
import torch
from PIL import Image

from starflow.data import ImageFolderDataset, VideoFolderDataset


def _img(path, w, h, value=200):
    a = np.full((h, w, 3), value, dtype=np.uint8)
    a[: h // 2] = 10
    Image.fromarray(a).save(path)


def test_sidecar_and_folder_name_captions(tmp_path):
    (tmp_path / "golden_retriever").mkdir()
    _img(tmp_path / "golden_retriever" / "a.png", 20, 20)
    _img(tmp_path / "golden_retriever" / "b.png", 24, 20)
    (tmp_path / "golden_retriever" / "b.txt").write_text("a dog on grass\n")
    _img(tmp_path / "cat.jpg", 30, 30)
    (tmp_path / "cat.txt").write_text("a cat")
    ds = ImageFolderDataset(tmp_path, image_size=16)
    caps = dict(zip([p.name for p in ds.files], ds.captions))
    assert caps == {"a.png": "golden retriever", "b.png": "a dog on grass", "cat.jpg": "a cat"}
    x = ds.load(0)
    assert x.dtype == torch.uint8 and x.shape == (3, 16, 16)
    assert ds.levels == 256 and ds.class_names == ["golden retriever"]
    assert ds.labels.tolist() == [0, 0, -1] or ds.labels.tolist() == [-1, 0, 0]


def test_caption_tables_csv_and_jsonl(tmp_path):
    _img(tmp_path / "x.png", 16, 16)
    _img(tmp_path / "y.png", 16, 16)
    (tmp_path / "captions.csv").write_text("file,caption\nx.png,first\ny.png,\"second, with comma\"\n")
    ds = ImageFolderDataset(tmp_path, image_size=8, channels=1)
    assert ds.captions == ["first", "second, with comma"] and ds.load(1).shape == (1, 8, 8)
    (tmp_path / "captions.csv").unlink()
    (tmp_path / "captions.jsonl").write_text(json.dumps({"file": "x.png", "caption": "j1"}) + "\n" +
                                             json.dumps({"file": "y.png", "text": "j2"}) + "\n")
    assert ImageFolderDataset(tmp_path, image_size=8).captions == ["j1", "j2"]


def test_missing_caption_is_a_clear_error(tmp_path):
    _img(tmp_path / "x.png", 16, 16)
    with pytest.raises(ValueError, match="no caption for .*x.png"):
        ImageFolderDataset(tmp_path, image_size=8)
    assert ImageFolderDataset(tmp_path, image_size=8, require_captions=False).captions == [""]


def test_aspect_ratio_buckets(tmp_path):
    _img(tmp_path / "wide.png", 64, 32)
    _img(tmp_path / "square.png", 40, 40)
    for p in tmp_path.glob("*.png"):
        p.with_suffix(".txt").write_text(p.stem)
    ds = ImageFolderDataset(tmp_path, image_size=16, aspect_ratios=["1:1", "2:1"], multiple=4)
    shapes = {ds.captions[i]: tuple(ds.load(i).shape) for i in range(len(ds))}
    assert shapes == {"square": (3, 16, 16), "wide": (3, 12, 24)}
    assert sorted(ds.bucket_ids()) == [0, 1]


def test_video_folder_gif_and_mp4(tmp_path):
    import imageio.v3 as iio

    frames = np.zeros((6, 16, 16, 3), dtype=np.uint8)
    for t in range(6):
        frames[t, :, t * 2:t * 2 + 4] = 255
    iio.imwrite(tmp_path / "clip.gif", frames, plugin="pillow", duration=100, loop=0)
    iio.imwrite(tmp_path / "clip2.mp4", frames, plugin="pyav", codec="libx264", fps=8)
    (tmp_path / "clip.txt").write_text("a bar moving right")
    (tmp_path / "clip2.txt").write_text("the same, as mp4")
    ds = VideoFolderDataset(tmp_path, image_size=8, num_frames=3, frame_stride=2, channels=1)
    assert ds.is_video and ds.captions == ["a bar moving right", "the same, as mp4"]
    for i in range(2):
        v = ds.load(i)
        assert v.shape == (3, 1, 8, 8) and v.dtype == torch.uint8
        cols = [int(v[t, 0].float().sum(0).argmax()) for t in range(3)]
        assert cols[0] < cols[1] < cols[2]   # frames 0, 2, 4: the bar moves right
    with pytest.warns(UserWarning, match="repeating its last frame"):
        long = VideoFolderDataset(tmp_path, image_size=8, num_frames=10, channels=1).load(0)
    assert long.shape[0] == 10 and torch.equal(long[-1], long[-2])


# ---- bit depth, unreadable files, caption encodings -----------------------------------------------------------
def _png16(path, a):
    """A 16-bit PNG written byte by byte (Pillow cannot write 16-bit colour): a is uint16 (H, W, 1 or 3)."""
    import struct
    import zlib

    h, w, c = a.shape
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 3: 2}[c], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) +
                     chunk(b"IEND", b""))


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_pngs_are_scaled_to_8_bits_not_clipped(tmp_path, channels):
    a = (np.arange(64, dtype=np.uint16).reshape(8, 8, 1) * 1000 + 500)        # 500 .. 63500, mean 32000
    _png16(tmp_path / "grey.png", a)
    _png16(tmp_path / "rgb.png", np.concatenate([a, a // 2, a // 3], -1))
    ds = ImageFolderDataset(tmp_path, image_size=8, channels=channels, require_captions=False)
    expected = np.round(a[..., 0] / 257)                                      # v * 255 / 65535
    for i, name in enumerate(p.name for p in ds.files):
        x = ds.load(i).numpy().astype(float)
        assert x.shape == (channels, 8, 8)
        if name == "grey.png":     # Pillow's convert clipped these to 255 (mean 254 of 255)
            assert np.abs(x - expected).max() <= 1 and abs(x.mean() - 32000 / 257) < 1
        elif channels == 3:        # Pillow reads 16-bit colour by its high byte: within one level
            assert np.abs(x[0] - expected).max() <= 1 and np.abs(x[1] - np.round(a[..., 0] // 2 / 257)).max() <= 1


def test_a_16_bit_first_frame_is_scaled_too(tmp_path):
    from starflow.data.media import load_image

    _png16(tmp_path / "g.png", np.full((4, 4, 1), 65535 // 2, np.uint16))
    img = load_image(tmp_path / "g.png")
    assert img.mode == "L" and np.asarray(img).max() == 127          # 32767 * 255 / 65535 = 127.5-; clipped: 255


def _broken(path):
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a picture")


def test_an_unreadable_image_is_a_clear_error_or_skipped_and_counted(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        _img(tmp_path / name, 16, 16)
    _broken(tmp_path / "bad.png")
    ds = ImageFolderDataset(tmp_path, image_size=8, require_captions=False, cache=False)
    i = [p.name for p in ds.files].index("bad.png")
    with pytest.raises(ValueError, match=r"cannot read .*bad.png.*data.skip_unreadable=true"):
        ds.load(i)
    # with aspect-ratio buckets every header is read while the folder is scanned: the same error, naming the file
    with pytest.raises(ValueError, match=r"cannot read .*bad.png"):
        ImageFolderDataset(tmp_path, image_size=8, aspect_ratios=["1:1", "2:1"], require_captions=False)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image file\(s\) of 4 .*bad.png"):
        ds = ImageFolderDataset(tmp_path, image_size=8, aspect_ratios=["1:1", "2:1"], require_captions=False,
                                skip_unreadable=True)
    assert [p.name for p in ds.files] == ["a.png", "b.png", "c.png"] and len(ds.skipped) == 1
    assert ds.get_batch(torch.arange(3)).values.shape == (3, 3, 8, 8)
    for name in ("a.png", "b.png", "c.png"):
        _broken(tmp_path / name)
    with pytest.raises(ValueError, match="none of the 4 image files"), pytest.warns(UserWarning):
        ImageFolderDataset(tmp_path, image_size=8, require_captions=False, skip_unreadable=True)


def test_a_caption_file_that_is_not_utf8_is_named(tmp_path):
    _img(tmp_path / "x.png", 16, 16)
    (tmp_path / "x.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match=r"x.txt is not UTF-8 text"):
        ImageFolderDataset(tmp_path, image_size=8)
    (tmp_path / "x.txt").unlink()
    (tmp_path / "captions.csv").write_bytes("file,caption\nx.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"captions.csv is not UTF-8 text"):
        ImageFolderDataset(tmp_path, image_size=8)
