"""decode_image: every input mode becomes (H, W, 3) uint8; bad bytes raise DecodeError by key."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from store.decode import decode_image, load_image_file
from store.errors import DecodeError


def _encode(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _check(arr: np.ndarray, h: int, w: int) -> None:
    assert arr.dtype == np.uint8
    assert arr.shape == (h, w, 3)


def test_grey_palette_rgba_cmyk() -> None:
    grey = Image.fromarray(np.full((5, 7), 200, dtype=np.uint8), mode="L")
    out = decode_image(_encode(grey))
    _check(out, 5, 7)
    assert (out == 200).all()
    pal = grey.convert("P")
    _check(decode_image(_encode(pal)), 5, 7)
    rgba = np.zeros((4, 6, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 10
    out = decode_image(_encode(Image.fromarray(rgba, mode="RGBA")))
    _check(out, 4, 6)
    assert (out[..., 0] == 255).all() and (out[..., 1] == 0).all()  # alpha dropped
    la = Image.fromarray(np.full((3, 3, 2), 50, dtype=np.uint8), mode="LA")
    assert (decode_image(_encode(la)) == 50).all()
    cmyk = Image.new("CMYK", (4, 3), (0, 0, 0, 0))  # no ink = white
    out = decode_image(_encode(cmyk, "JPEG", quality=100))
    _check(out, 3, 4)
    assert out.min() >= 250


def test_sixteen_bit_reduced_by_shift() -> None:
    arr = np.array([[0, 256, 65535]], dtype=np.uint16)
    img = Image.fromarray(arr)
    out = decode_image(_encode(img))
    _check(out, 1, 3)
    assert out[0, :, 0].tolist() == [0, 1, 255]


def test_exif_orientation_applied() -> None:
    arr = np.zeros((2, 4, 3), dtype=np.uint8)
    arr[0, 0] = 255  # top-left marker, image 2 high x 4 wide
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    out = decode_image(_encode(img, "PNG", exif=exif))
    _check(out, 4, 2)
    assert out[0, 1].tolist() == [255, 255, 255]  # top-left moved to top-right (90° clockwise)
    assert int(out.sum()) == 3 * 255


def test_animated_gif_first_frame() -> None:
    frames = [Image.new("RGB", (6, 5), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out = decode_image(buf.getvalue())
    _check(out, 5, 6)
    assert out[..., 0].mean() > 200 and out[..., 2].mean() < 50


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "empty"),
        (b"hello, I am not an image", "UnidentifiedImageError"),
    ],
)
def test_bad_bytes_raise_decode_error(data: bytes, needle: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_image(data, key="k1")
    assert info.value.key == "k1"
    assert needle in info.value.reason


def test_truncated_jpeg_raises() -> None:
    rng = np.random.default_rng(0)
    data = _encode(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(DecodeError) as info:
        decode_image(data[: len(data) // 2], key="t.jpg")
    assert info.value.key == "t.jpg"


def test_max_pixels_refused_before_decoding() -> None:
    data = _encode(Image.new("L", (100, 100)))
    assert decode_image(data, max_pixels=10_000).shape == (100, 100, 3)
    with pytest.raises(DecodeError, match="exceeds max"):
        decode_image(data, key="bomb", max_pixels=9_999)


def test_load_image_file_missing() -> None:
    with pytest.raises(DecodeError) as info:
        load_image_file("/nonexistent/x.png", key="x.png")
    assert info.value.key == "x.png"
