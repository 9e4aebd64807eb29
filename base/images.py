"""Opening an image from wherever a table, an index or a user points: one function, one error.

``load_image`` takes encoded bytes, a local path or a PIL image and returns it decoded in RGB, or
raises ``MissingImageError`` naming what was asked for. Used by the memory readers, the MLLM
alignment and ``vimi.generate``'s inputs, so an unreadable picture reads the same everywhere.
"""
from __future__ import annotations

import io
import os
import re

from PIL import Image

from base.errors import MissingImageError

URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.I)
ImageRef = bytes | bytearray | memoryview | str | os.PathLike | Image.Image | None


def load_image(ref: ImageRef, name: str | None = None) -> Image.Image:
    """Open an image given as encoded bytes or a path; return it decoded, in RGB.

    Transparent images are composited on white (what a captioned picture looks like). Raises
    :class:`MissingImageError` naming the path (or ``name``, e.g. the row id, for bytes).
    """
    label = name or (f"<{len(ref)} bytes>" if isinstance(ref, (bytes, bytearray, memoryview)) else str(ref))
    if ref is None:
        raise MissingImageError(f"{name or 'row'}: has no image")
    if isinstance(ref, Image.Image):
        return _to_rgb(ref)
    if isinstance(ref, (str, os.PathLike)) and URL.match(str(ref)):
        raise MissingImageError(f"{label}: is a URL; images must be local (nothing is downloaded)")
    src = io.BytesIO(bytes(ref)) if isinstance(ref, (bytes, bytearray, memoryview)) else ref
    try:
        with Image.open(src) as im:
            im.load()  # decode now, so a truncated file fails here and not in a worker later
            return _to_rgb(im)
    except FileNotFoundError:
        raise MissingImageError(f"{label}: image file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise MissingImageError(f"{label}: cannot decode image ({e})") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")
