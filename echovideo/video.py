"""Video size rules shared by the sampler, the face frame and the nodes."""
from .errors import check

SPATIAL_COMPRESSION = 8
TEMPORAL_COMPRESSION = 4
MAX_SIZE = 2048  # pixels a side the nodes and the CLI take (the model was trained at 480x720)
MAX_FRAMES = 257  # frames the nodes and the CLI take (the model was trained at 49)


def frames_decoded_from(latent_frame_count: int) -> int:
    """Frames the VAE returns for this many latent frames: it decodes them in pairs (the first three together
    when their count is odd), so an even count gives 4 frames per latent, not 4k+1."""
    n = latent_frame_count
    return 4 * n if n % 2 == 0 else 4 * (n - 1) + 1


def decoded_frame_count(num_frames: int) -> int:
    """Frames the VAE returns for a num_frames request (any count: the latents hold latent_frames(num_frames))."""
    return frames_decoded_from(latent_frames(num_frames))


def _size_rules(width, height, num_frames, exact_frames):
    """(holds, argument, got, needs) for each size rule."""
    four_k_plus_1 = isinstance(num_frames, int) and num_frames >= 1 and (num_frames - 1) % TEMPORAL_COMPRESSION == 0
    if not exact_frames:  # as the published pipeline: any count, floored to 4k+1 by latent_frames (11 -> 9)
        rules = [(isinstance(num_frames, int) and num_frames >= 1, "num_frames", num_frames,
                  "a positive frame count (e.g. 49)")]
    elif not four_k_plus_1:
        rules = [(False, "num_frames", num_frames, "8k+1 frames (1, 9, 17, 25, 33, 41, 49)")]
    else:
        rules = [(decoded_frame_count(num_frames) == num_frames, "num_frames", num_frames,
                  "8k+1 frames (1, 9, 17, 25, 33, 41, 49): the VAE decodes latent frames in pairs, so "
                  f"{num_frames} would come out as {decoded_frame_count(num_frames)} frames")]
    rules += [
        (isinstance(height, int) and height >= 16 and height % 16 == 0, "height", height,
         "a positive multiple of 16 (e.g. 480)"),
        (isinstance(width, int) and width >= 16 and width % 16 == 0, "width", width,
         "a positive multiple of 16 (e.g. 848)"),
    ]
    return rules


def check_video_size(width: int, height: int, num_frames: int, exact_frames: bool = False) -> None:
    """Raises EchoVideoInputError for the first size rule broken. The library takes any positive frame count, as
    the published pipeline takes any up to 49 (both make latent_frames(num_frames) latent frames, so 10-12 give 3,
    decoded to 9 frames); exact_frames (the nodes, the CLI) takes only counts that decode to themselves (8k+1)."""
    for holds, argument, got, needs in _size_rules(width, height, num_frames, exact_frames):
        check(holds, argument, got, needs)


def video_size_problems(width: int, height: int, num_frames: int, exact_frames: bool = False) -> list:
    """Every size rule broken, as messages in check's wording (empty when the size is fine)."""
    return [f"{argument}: got {got}, needs {needs}"
            for holds, argument, got, needs in _size_rules(width, height, num_frames, exact_frames) if not holds]


def latent_frames(num_frames: int) -> int:
    return (num_frames - 1) // TEMPORAL_COMPRESSION + 1
