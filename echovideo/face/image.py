"""Image conversions: file loading with EXIF, [0,1] floats to uint8, long-side downscale."""
from __future__ import annotations

import cv2
import numpy as np

from .errors import FaceError

MAX_LONG_SIDE = 1024  # published pipeline: resize_numpy_image_long(image, 1024)


def load_image_file(path: str) -> np.ndarray:
    """Read an image file as uint8 RGB HxWx3 with its EXIF orientation applied."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            file_format = im.format  # the transposed copy has none
            im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I;16") or (im.mode == "I" and file_format == "PNG"):
                # 16-bit grayscale (older Pillow opens 16-bit PNGs as mode I): convert("RGB") would clip it;
                # other mode-I images (32-bit TIFFs) convert as in the published code
                im = Image.fromarray((np.asarray(im, dtype=np.float64) * (255 / 65535)).round().clip(0, 255)
                                     .astype(np.uint8))
            return np.array(im.convert("RGB"))
    except Image.DecompressionBombError as e:
        raise FaceError(f"image: {path!r} is too large to open safely ({e}); downscale it (the face pipeline "
                        f"works at {MAX_LONG_SIDE} pixels on the long side)") from None
    except (UnidentifiedImageError, OSError) as e:
        raise FaceError(f"image: {path!r} could not be read as an image ({e}); use a PNG, JPEG or WebP photo") from None


def to_uint8_rgb(image) -> np.ndarray:
    """One image (HxWx3 / HxWx4 / HxW; uint8, or float in [0,1]; numpy or torch) -> uint8 RGB HxWx3.

    Floats are clipped to [0,1] and rounded (ComfyUI's own PIL conversion uses
    clip(255*x) then truncation; rounding is kept deliberately for exact
    uint8 -> float -> uint8 round trips).
    """
    if hasattr(image, "detach"):  # torch tensor
        image = image.detach().cpu().float().numpy() if image.is_floating_point() else image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise FaceError(f"image: got shape {tuple(image.shape)}, needs HxWx3 (RGB)")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    image = image[:, :, :3]
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise FaceError(f"image: got size {image.shape[1]}x{image.shape[0]}, needs at least 2x2 pixels; connect a "
                        "photo")
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if np.issubdtype(image.dtype, np.floating):
        return np.ascontiguousarray(np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8))
    if image.dtype == np.uint16:
        return np.ascontiguousarray((image.astype(np.uint32) * 255 // 65535).astype(np.uint8))
    if np.issubdtype(image.dtype, np.integer) and image.min() >= 0 and image.max() <= 255:
        return np.ascontiguousarray(image.astype(np.uint8))
    raise FaceError(f"image: got dtype {image.dtype}, needs uint8 or float in [0,1]")


def resize_long_side(image: np.ndarray, max_long_side: int = MAX_LONG_SIDE) -> np.ndarray:
    """Downscale so the long side is at most max_long_side (as the published code).

    Sizes are int(h*k), int(w*k) with cv2 INTER_LANCZOS4; smaller images are
    returned unchanged.
    """
    h, w = image.shape[:2]
    k = min(1.0, max_long_side / max(h, w))
    new_h, new_w = int(h * k), int(w * k)
    check_not_too_elongated(new_h, new_w, h, w)
    if k == 1.0:
        return image
    return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LANCZOS4)


DETECTOR_SIDE = 640  # insightface's detector input: the long side scaled to it


def check_not_too_elongated(h: int, w: int, photo_h: int, photo_w: int) -> None:
    """h x w, the photo after the long-side downscale: a side that it or the detector's scaling brings under 2
    pixels cannot hold a face."""
    if min(h, w) < 2 or int(DETECTOR_SIDE * min(h, w) / max(h, w)) < 2:
        raise FaceError(f"image: {photo_w}x{photo_h} is too elongated to hold a face; crop it around the face")
