"""Safe image decoding: every way PIL can refuse bytes (truncated, bit-flipped, wrong header, decompression bomb)
becomes one :class:`CorruptImage`, so readers can skip and count the image, or name the file to the user."""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

#: Largest image accepted, in pixels (PIL's own default limit: about 89 M pixels, a 9,459² image).
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


class CorruptImage(ValueError):
    """Bytes that are not a decodable image of acceptable size."""


#: Everything PIL raises for bytes it refuses (a reader that decodes by itself catches these).
REFUSED = (UnidentifiedImageError, OSError, ValueError, SyntaxError, TypeError, EOFError, IndexError,
            struct.error, Image.DecompressionBombError, Image.DecompressionBombWarning,
            MemoryError, ZeroDivisionError)


def open_checked(data: bytes, what: str = "image") -> Image.Image:
    """``Image.open`` with the pixel count checked before any decoding (a bomb costs no memory)."""
    img = Image.open(io.BytesIO(data))
    width, height = img.size
    if width < 1 or height < 1 or width * height > MAX_PIXELS:
        img.close()
        raise CorruptImage(f"{what} of {width}x{height} pixels is refused (limit {MAX_PIXELS:,} pixels)")
    return img


def decode(data: bytes, mode: str = "RGB", what: str = "image") -> np.ndarray:
    """Decode image bytes to ``uint8 [H, W, C]`` (``mode="RGB"``) or ``[H, W]`` (``"L"``).

    Raises:
        CorruptImage: for anything PIL refuses, or an image over :data:`MAX_PIXELS`.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)) or not len(data):
        raise CorruptImage(f"undecodable {what} (no bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open_checked(bytes(data), what) as img:
                img.load()
                return np.asarray(img.convert(mode), dtype=np.uint8)
    except CorruptImage:
        raise
    except REFUSED as err:
        raise CorruptImage(f"undecodable {what} ({err.__class__.__name__}: {str(err)[:120]})") from None


def decode_rgb(data: bytes) -> np.ndarray:
    """JPEG/PNG bytes → ``uint8 [H, W, 3]`` RGB. Raises :class:`CorruptImage`."""
    return decode(data, "RGB", "image")


def check_encoded(data: bytes) -> str:
    """Check bytes decode fully; return the format (``"PNG"``, ``"JPEG"``, …). Raises :class:`CorruptImage`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open_checked(bytes(data)) as img:
                img.load()
                return img.format or "PNG"
    except CorruptImage:
        raise
    except REFUSED as err:
        raise CorruptImage(f"undecodable image ({err.__class__.__name__}: {str(err)[:120]})") from None
