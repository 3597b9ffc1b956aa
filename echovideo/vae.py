"""CogVideoX VAE: face-frame latents (encode) and video decode with tiling and frame batching."""
import contextlib
import logging
import math
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image

from .errors import CheckpointError, check, import_failure, is_out_of_memory
from .host_memory import large_blocks_unmapped_on_free
from .video import check_video_size, latent_frames

RELEASED_VAE_CONFIG = dict(
    in_channels=3, out_channels=3,
    down_block_types=["CogVideoXDownBlock3D"] * 4, up_block_types=["CogVideoXUpBlock3D"] * 4,
    block_out_channels=[128, 256, 256, 512], latent_channels=16, layers_per_block=3, act_fn="silu",
    norm_eps=1e-6, norm_num_groups=32, temporal_compression_ratio=4, sample_height=480, sample_width=720,
    scaling_factor=0.7, shift_factor=None, latents_mean=None, latents_std=None, force_upcast=True,
    use_quant_conv=False, use_post_quant_conv=False)


VAE_CONFIG_KEYS = ("block_out_channels", "latent_channels", "down_block_types", "up_block_types")


def build_vae(config: dict, dtype=torch.float32, device="cpu", drop_unused_caches: bool = True,
              onednn_conv3d: bool = True):
    """AutoencoderKLCogVideoX from a config; drop_unused_caches=False and onednn_conv3d=False keep diffusers'
    stock convs."""
    import inspect

    try:
        from diffusers import AutoencoderKLCogVideoX
    except ImportError as e:
        raise import_failure(e, "the CogVideoX VAE") from e

    missing = [k for k in VAE_CONFIG_KEYS if k not in config]
    if missing:
        raise CheckpointError(f"the config is not a CogVideoX VAE config (no {', '.join(missing)}); "
                              "use the CogVideoX-5B VAE")
    accepted = set(inspect.signature(AutoencoderKLCogVideoX.__init__).parameters)
    cfg = {k: v for k, v in config.items() if k in accepted}
    try:
        vae = AutoencoderKLCogVideoX(**cfg).eval().requires_grad_(False)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"the VAE config is not a CogVideoX VAE config: {e}") from e
    if drop_unused_caches:
        drop_unused_conv_caches(vae)
    if onednn_conv3d:
        conv3d_through_onednn_on_cpu(vae)
    return _move(vae, device, dtype)


def _conv_without_cache(self, inputs, conv_cache=None):
    return self.conv(inputs), None


def drop_unused_conv_caches(vae) -> int:
    """diffusers' causal conv with a temporal kernel of 1 (the spatial norms' conv_y/conv_b) keeps a copy of
    its whole input as the "cache" for the next frame chunk, which it never reads: at full resolution these
    copies are most of the decoder's memory, held from one chunk to the next. Such convs return no cache
    here; their output is unchanged. Returns how many convs were changed."""
    import types

    changed = 0
    for module in vae.modules():
        if (getattr(module, "time_kernel_size", None) == 1 and getattr(module, "pad_mode", None) != "replicate"
                and isinstance(getattr(module, "conv", None), torch.nn.Conv3d)):
            module.forward = types.MethodType(_conv_without_cache, module)
            changed += 1
    return changed


def _onednn_conv_forward(self, input, weight, bias):
    if (input.device.type != "cpu" or input.dtype != torch.float32 or weight.dtype != torch.float32
            or isinstance(self.padding, str) or self.padding_mode != "zeros"
            or not torch.backends.mkldnn.enabled):  # the user's torch.backends.mkldnn.flags(enabled=False)
        return torch.nn.Conv3d._conv_forward(self, input, weight, bias)
    return torch.ops.aten.mkldnn_convolution(input, weight, bias, self.padding, self.stride, self.dilation,
                                             self.groups)


def conv3d_through_onednn_on_cpu(vae) -> int:
    """torch sends a float32 CPU conv3d with batch 1, no groups and a kernel of 3 or less to its slow
    im2col kernel unless batch x channels x frames x height exceeds 20480: at small sizes (short or small
    videos, the benchmark's tiny VAE) that is about half of a decode's time. These convs go to oneDNN
    instead (what torch picks above that size anyway); other devices and dtypes keep torch's choice.
    Returns how many convs were changed."""
    import types

    if not torch.backends.mkldnn.is_available():  # a torch built without oneDNN
        return 0
    changed = 0
    for module in vae.modules():
        if isinstance(module, torch.nn.Conv3d):
            module._conv_forward = types.MethodType(_onednn_conv_forward, module)
            changed += 1
    return changed


def _move(vae, device, dtype):
    # torch's Module.to: diffusers' ModelMixin.to logs a "should be kept in float32: []" warning on every
    # dtype cast, even for this VAE, which keeps no module in float32
    return torch.nn.Module.to(vae, device=device, dtype=dtype)


def load_vae(path: str, dtype=torch.float32, device="cpu"):
    """AutoencoderKLCogVideoX from a diffusers folder (config.json + safetensors) or one .safetensors
    (config from its metadata key "config", else the released CogVideoX-5B VAE config)."""
    from .checkpoint import read_config_and_weights

    cfg, state = read_config_and_weights(path, "VAE", RELEASED_VAE_CONFIG)
    try:
        vae = build_vae(cfg, dtype=torch.float32, device="cpu")
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    missing, unexpected = vae.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} is not a CogVideoX VAE with this config: first missing key {missing[:1]}, first unexpected "
            f"key {unexpected[:1]} ({len(missing)} missing, {len(unexpected)} unexpected). Use the CogVideoX-5B "
            f"VAE (vae/diffusion_pytorch_model.safetensors of the EchoVideo or CogVideoX-5b release).")
    return _move(vae, device, dtype)


ASPECT_TOLERANCE = 0.02  # the reference's rounding of a square crop's padding stays well inside this


def aspect_stretch(h: int, w: int, width: int, height: int) -> float:
    """How much resizing an h x w image to width x height stretches it along one axis (1.0: not at all)."""
    s = (width / height) / (w / h)
    return max(s, 1 / s)


def pad_to_aspect(image: np.ndarray, width: int, height: int, keep_proportions: bool = False) -> np.ndarray:
    """Pads with black towards the video's aspect ratio, as the reference (top/left padding = pad // 2).

    The reference's target (m x int(m r) or int(m / r) x m, each side at least the image's) reaches the aspect only
    for images near square; with keep_proportions, an image it would leave stretched by more than
    ASPECT_TOLERANCE is padded to the video's exact aspect instead (near-square images keep the reference's size)."""
    ratio = width / height
    h, w = image.shape[:2]
    m = min(h, w)
    if ratio > 1.0:
        new_h, new_w = m, int(m * ratio)
    else:
        new_h, new_w = int(m / ratio), m
    new_h, new_w = max(new_h, h), max(new_w, w)
    if keep_proportions and aspect_stretch(new_h, new_w, width, height) > 1 + ASPECT_TOLERANCE:
        new_h, new_w = max(h, round(w / ratio)), max(w, round(h * ratio))
    top, left = (new_h - h) // 2, (new_w - w) // 2
    out = np.zeros((new_h, new_w, 3), dtype=image.dtype)
    out[top:top + h, left:left + w] = image
    return out


def first_frame_pixels(face_uint8: np.ndarray, width: int, height: int, keep_proportions: bool = False) -> torch.Tensor:
    """[1, 3, H, W] in [-1, 1]: face padded to the aspect ratio (see pad_to_aspect), Lanczos-resized to W x H."""
    check(isinstance(face_uint8, np.ndarray) and face_uint8.dtype == np.uint8 and face_uint8.ndim == 3
          and face_uint8.shape[2] == 3, "face image", getattr(face_uint8, "shape", type(face_uint8)),
          "a uint8 H x W x 3 RGB array")
    padded = pad_to_aspect(face_uint8, width, height, keep_proportions)
    stretch = aspect_stretch(*padded.shape[:2], width, height)
    if stretch > 1 + ASPECT_TOLERANCE:
        logging.getLogger("echovideo").warning(
            "EchoVideo: the %dx%d reference image's aspect differs from the %dx%d video's, and the published "
            "padding rule stretches the first frame %.2fx; pad the image to %d:%d for an undistorted first frame",
            face_uint8.shape[1], face_uint8.shape[0], width, height, stretch, width, height)
    padded = Image.fromarray(padded)
    resized = np.asarray(padded.resize((width, height), Image.LANCZOS)).astype(np.float32) / np.float32(255.0)
    x = torch.from_numpy(resized).permute(2, 0, 1).unsqueeze(0)
    return 2.0 * x - 1.0


@torch.no_grad()
def encode_face_frame(vae, face_uint8: np.ndarray, width: int, height: int, num_frames: int,
                      dtype=torch.float32, keep_proportions: bool = False) -> torch.Tensor:
    """Image latents [1, F, C, h, w]: latent frame 0 = VAE posterior mode of the face frame times the
    scaling factor, zeros in the other latent frames. Encoded as the published infer.py does, with diffusers'
    default tiling on: frames larger than half the VAE's training size (240 x 360) go in overlapping tiles.
    keep_proportions: see pad_to_aspect (the nodes and the CLI set it; the reference's rule is the default)."""
    check_video_size(width, height, num_frames)
    p = next(vae.parameters())
    pixels = first_frame_pixels(face_uint8, width, height, keep_proportions).to(device=p.device, dtype=p.dtype)
    configure_tiling(vae, True)  # the VAE's default tiles; smaller frames (the golden file's) are encoded whole
    latent = vae.encode(pixels.unsqueeze(2)).latent_dist.mode()  # [1, C, 1, h, w]
    latent = (vae.config.scaling_factor * latent.to(dtype)).permute(0, 2, 1, 3, 4)
    rest = torch.zeros((1, latent_frames(num_frames) - 1, *latent.shape[2:]), dtype=dtype, device=latent.device)
    return torch.cat([latent, rest], dim=1)


def spatial_scale(vae) -> int:
    """Pixels per latent along each side (8 for the released VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def default_tiling(vae) -> dict:
    """diffusers' CogVideoX VAE defaults: half the training size per tile, overlap 1/6 (height) and 1/5 (width)."""
    return dict(tile_sample_min_height=vae.config.sample_height // 2, tile_sample_min_width=vae.config.sample_width // 2,
                tile_overlap_factor_height=1 / 6, tile_overlap_factor_width=1 / 5)


TILE_SIZE_RULE = "a multiple of 16, at least 64 pixels (or 0 for the VAE's default)"


def check_tile_size(tile_size) -> None:
    """A custom tile size: a multiple of 16 pixels, at least 64."""
    check(isinstance(tile_size, int) and tile_size >= 64 and tile_size % 16 == 0, "tile_size", tile_size,
          TILE_SIZE_RULE)


def floats_near(x: float, ulps: int):
    """x, then the floats 1, -1, 2, -2, ... ulps away from it."""
    yield x
    up = down = x
    for _ in range(ulps):
        up, down = math.nextafter(up, math.inf), math.nextafter(down, -math.inf)
        yield up
        yield down


def tile_overlap_factor(tile_size: int, scale: int, overlap: float) -> float:
    """The overlap factor diffusers' tiled decode gets: whole latents of overlap, nearest to `overlap` of the tile,
    written as a float with which the decoder's latent stride (int(tile_latents * (1 - f))) and the pixels it
    keeps per tile (tile_size - int(tile_size * f)) agree. Only o / tile_latents, give or take rounding, does;
    for some sizes (e.g. 560) no float near it does, and the next whole overlap is used."""
    tile_latent = tile_size // scale
    target = max(1, round(tile_latent * overlap))
    for overlap_latents in sorted(range(1, tile_latent), key=lambda o: (abs(o - target), o)):
        for factor in floats_near(overlap_latents / tile_latent, ulps=4):
            if int(tile_latent * (1 - factor)) == tile_latent - overlap_latents \
                    and tile_size - int(tile_size * factor) == (tile_latent - overlap_latents) * scale:
                return factor
    raise ValueError(f"tile_size {tile_size}: no overlap factor keeps the tiled decode's stride whole")


def configure_tiling(vae, tiling: bool, tile_size: Optional[int] = None, overlap: float = 1 / 6) -> None:
    """Spatial tiling, every value set explicitly (diffusers' enable_tiling() keeps earlier values, and the VAE
    object is shared between nodes and runs). tile_size: pixels per tile side (multiple of 16, >= 64; None =
    the VAE's default); the overlap is rounded to whole latents so that the tiles' stride and the kept region
    agree (otherwise the output size drifts)."""
    if not tiling:
        vae.disable_tiling()
        return
    if not tile_size:
        vae.enable_tiling(**default_tiling(vae))
        return
    check_tile_size(tile_size)
    scale = spatial_scale(vae)
    factor = tile_overlap_factor(tile_size, scale, overlap)
    vae.enable_tiling(tile_sample_min_height=tile_size, tile_sample_min_width=tile_size,
                      tile_overlap_factor_height=factor, tile_overlap_factor_width=factor)


def encode_region(vae, height: int, width: int):
    """(height, width) in pixels of the largest region one encoder pass of encode_face_frame sees."""
    return decode_region(vae, height, width, tiling=True)


def decode_region(vae, height: int, width: int, tiling: bool, tile_size: Optional[int] = None):
    """(height, width) in pixels of the largest region one decoder pass sees: a tile, or the whole frame."""
    if not tiling:
        return height, width
    if tile_size:
        return min(height, tile_size), min(width, tile_size)
    t = default_tiling(vae)
    return min(height, t["tile_sample_min_height"]), min(width, t["tile_sample_min_width"])


@torch.no_grad()
def decode_raw(vae, latents: torch.Tensor, tiling: bool = False, tile_size: Optional[int] = None,
               progress: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """latents [B, F, C, h, w] (scaled) -> frames [B, 3, frames, H, W] in the VAE's range (about [-1, 1]).

    The VAE decodes latent frames in chunks of 2 with a causal conv cache, so memory does not grow
    with video length; tiling bounds it spatially."""
    check(latents.dim() == 5 and latents.shape[2] == vae.config.latent_channels, "latents", tuple(latents.shape),
          f"[batch, latent frames, {vae.config.latent_channels}, h, w]")
    configure_tiling(vae, tiling, tile_size)
    p = next(vae.parameters())
    z = (latents.to(device=p.device, dtype=p.dtype) / vae.config.scaling_factor).permute(0, 2, 1, 3, 4)
    per_video = decoder_calls_per_video(vae, z.shape[2], z.shape[3], z.shape[4])
    total, done = per_video * z.shape[0], [0]

    def on_chunk(*_):
        done[0] = min(done[0] + 1, total)
        progress(done[0], total)

    handle = vae.decoder.register_forward_hook(on_chunk) if progress else None
    try:
        outs = [vae.decode(z[i:i + 1]).sample.float().cpu() for i in range(z.shape[0])]
    finally:
        if handle is not None:
            handle.remove()
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)


def retry_tile_size(vae, height: int, width: int, tile_size: Optional[int]):
    """Tile size for the tiled retry of an untiled decode that ran out of memory: `tile_size` (0: the VAE's
    default, also for None) where it splits the frame, else half the frame's longer side (a multiple of 16, at
    least 64), else None (the frame fits in any tile, so tiling would change nothing)."""
    if decode_region(vae, height, width, True, tile_size) != (height, width):
        return tile_size or 0
    half = max(64, max(height, width) // 2 // 16 * 16)
    return half if decode_region(vae, height, width, True, half) != (height, width) else None


def decoder_calls_per_video(vae, latent_frames: int, h: int, w: int) -> int:
    """How many decoder calls (frame chunks x spatial tiles) one video's decode makes: the progress total."""
    chunks = max(latent_frames // getattr(vae, "num_latent_frames_batch_size", 2), 1)
    tile_h, tile_w = getattr(vae, "tile_latent_min_height", h), getattr(vae, "tile_latent_min_width", w)
    if getattr(vae, "use_tiling", False) and (w > tile_w or h > tile_h):
        step_h = max(1, int(tile_h * (1 - vae.tile_overlap_factor_height)))
        step_w = max(1, int(tile_w * (1 - vae.tile_overlap_factor_width)))
        return chunks * len(range(0, h, step_h)) * len(range(0, w, step_w))
    return chunks


def decode_to_images(vae, latents: torch.Tensor, tiling: bool = True, tile_size: Optional[int] = None,
                     progress=None, retry_tiled_on_oom: bool = True, log=print) -> torch.Tensor:
    """Frames [B * frames, H, W, 3] float in [0, 1] (ComfyUI IMAGE layout). On CPU, large buffers go back to
    the OS as they are freed (host_memory), so the peak stays flat as frames grow."""
    on_cpu = next(vae.parameters()).device.type == "cpu"
    with large_blocks_unmapped_on_free() if on_cpu else contextlib.nullcontext():
        video = retry_tile = None
        try:
            video = decode_raw(vae, latents, tiling, tile_size, progress)
        except RuntimeError as e:  # the GPU's OutOfMemoryError, or the CPU allocator's plain RuntimeError
            if not is_out_of_memory(e) or tiling or not retry_tiled_on_oom:
                raise
            scale = spatial_scale(vae)
            retry_tile = retry_tile_size(vae, latents.shape[3] * scale, latents.shape[4] * scale, tile_size)
            if retry_tile is None:  # no tile splits a frame this small: a retry would be the same decode
                raise
            log("EchoVideo VAE decode ran out of memory untiled; retrying with tiling"
                + ("" if retry_tile == (tile_size or 0) else f" ({retry_tile} px tiles)"))
        if video is None:  # retried outside the handler, so the failed attempt's tensors are already freed
            _free_cache()
            video = decode_raw(vae, latents, True, retry_tile or None, progress)
    video.mul_(0.5).add_(0.5).clamp_(0, 1)  # in place: the decoded video is the largest tensor here
    return video.permute(0, 2, 3, 4, 1).reshape(-1, video.shape[3], video.shape[4], 3)


def _free_cache():
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
