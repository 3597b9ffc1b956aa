"""Video size rules shared by the sampler, the face frame and the nodes."""
from .errors import check

SPATIAL_COMPRESSION = 8
TEMPORAL_COMPRESSION = 4


def _size_rules(width, height, num_frames):
    """(holds, argument, got, needs) for each size rule."""
    return [
        (isinstance(num_frames, int) and num_frames >= 1 and (num_frames - 1) % TEMPORAL_COMPRESSION == 0,
         "num_frames", num_frames, "4k+1 frames (e.g. 9, 25, 49)"),
        (isinstance(height, int) and height >= 16 and height % 16 == 0, "height", height,
         "a positive multiple of 16 (e.g. 480)"),
        (isinstance(width, int) and width >= 16 and width % 16 == 0, "width", width,
         "a positive multiple of 16 (e.g. 848)"),
    ]


def check_video_size(width: int, height: int, num_frames: int) -> None:
    """Raises EchoVideoInputError for the first size rule broken."""
    for holds, argument, got, needs in _size_rules(width, height, num_frames):
        check(holds, argument, got, needs)


def video_size_problems(width: int, height: int, num_frames: int) -> list:
    """Every size rule broken, as messages in check's wording (empty when the size is fine)."""
    return [f"{argument}: got {got}, needs {needs}"
            for holds, argument, got, needs in _size_rules(width, height, num_frames) if not holds]


def latent_frames(num_frames: int) -> int:
    return (num_frames - 1) // TEMPORAL_COMPRESSION + 1
