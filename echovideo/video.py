"""Video size rules shared by the sampler, the face frame and the nodes."""
from .errors import check

SPATIAL_COMPRESSION = 8
TEMPORAL_COMPRESSION = 4


def check_video_size(width: int, height: int, num_frames: int) -> None:
    check(isinstance(num_frames, int) and num_frames >= 1 and (num_frames - 1) % TEMPORAL_COMPRESSION == 0,
          "num_frames", num_frames, "4k+1 frames (e.g. 9, 25, 49)")
    check(isinstance(height, int) and height >= 16 and height % 16 == 0, "height", height,
          "a positive multiple of 16 (e.g. 480)")
    check(isinstance(width, int) and width >= 16 and width % 16 == 0, "width", width,
          "a positive multiple of 16 (e.g. 848)")


def latent_frames(num_frames: int) -> int:
    return (num_frames - 1) // TEMPORAL_COMPRESSION + 1
