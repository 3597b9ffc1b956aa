"""Writes frames [F, H, W, 3] in [0, 1] to a video file (.mp4 through PyAV, .webp / .gif through Pillow)."""
import contextlib
import os
import tempfile

import numpy as np
import torch
from PIL import Image

BT601_SMPTE170M = 6  # FFmpeg's AVCOL_SPC / AVCOL_PRI / AVCOL_TRC value for SMPTE 170M (BT.601 525)
MPEG_RANGE = 1  # AVCOL_RANGE_MPEG: limited range, 16-235
VIDEO_EXTENSIONS = (".mp4", ".webp", ".gif")


def frames_to_uint8(frames) -> np.ndarray:
    a = frames.detach().float().cpu().numpy() if torch.is_tensor(frames) else np.asarray(frames, dtype=np.float32)
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"frames: got shape {a.shape}, needs [frames, H, W, 3]")
    return (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)


def frame_durations_ms(count: int, fps: float, tick: int = 1) -> list:
    """Per-frame display times in whole ticks (ms) whose running sum stays within a tick of frame i at i / fps,
    so the clip plays at fps on average (a constant int(1000 / fps) plays 16 fps as 16.7, GIF's 10 ms ticks as
    more)."""
    ends = [round((i + 1) * 1000 / (fps * tick)) * tick for i in range(count)]
    return [end - start for start, end in zip([0] + ends[:-1], ends)]


def save_video(frames, path: str, fps: int = 16) -> str:
    """Writes the video to a temporary file beside `path` and renames it into place once complete, so an
    interrupted or failed write leaves no partial file and an existing one unchanged."""
    video = frames_to_uint8(frames)
    ext = os.path.splitext(path)[1].lower()
    if ext not in VIDEO_EXTENSIONS:
        raise ValueError(f"output: got {path!r}, needs a .mp4, .webp or .gif file name")
    target = os.path.realpath(path)  # a link's target is replaced, not the link
    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    # a short name of its own: the output's name plus a suffix could pass the file system's name limit
    handle, partial = tempfile.mkstemp(dir=folder, prefix=".echovideo-", suffix=ext)
    os.close(handle)
    try:
        _write(video, partial, ext, fps)
        # mkstemp's file is private: an existing file's mode, or the one a plain open would give
        os.chmod(partial, os.stat(target).st_mode & 0o7777 if os.path.exists(target) else 0o666 & ~_umask())
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write(video: np.ndarray, path: str, ext: str, fps: int) -> None:
    if ext in (".webp", ".gif"):
        images = [Image.fromarray(f) for f in video]
        tick = 10 if ext == ".gif" else 1  # GIF stores frame times in centiseconds
        images[0].save(path, save_all=True, append_images=images[1:],
                       duration=frame_durations_ms(len(images), fps, tick), loop=0,
                       **({"lossless": True} if ext == ".webp" else {}))
        return
    height, width = video.shape[1:3]
    if height % 2 or width % 2:  # yuv420p halves both sides
        raise ValueError(f"frames: got {width}x{height}, an .mp4 needs an even width and height; crop or resize "
                         "the frames, or write a .webp or .gif")
    import av

    with av.open(path, mode="w") as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = video.shape[2], video.shape[1]
        stream.pix_fmt = "yuv420p"
        # the BT.601 limited-range YUV that the RGB frames are converted to, tagged so players need not guess
        # (untagged, many assume BT.709 from 720p up and shift the hues)
        cc = stream.codec_context
        cc.colorspace = cc.color_primaries = cc.color_trc = BT601_SMPTE170M
        cc.color_range = MPEG_RANGE
        for f in video:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
