"""Activation memory of the DiT and the VAE: one home for the estimates the nodes ask ComfyUI to free and the
memory plan (benchmarks/memory_plan.py) prints, and for MetaPeak, which measures such peaks on the meta device."""
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .video import SPATIAL_COMPRESSION, latent_frames


def dit_tokens(config, latent_frame_count: int, latent_height: int, latent_width: int) -> int:
    """Joint sequence length: text tokens + video patches."""
    p = config.patch_size
    return config.max_text_seq_length + latent_frame_count * (latent_height // p) * (latent_width // p)


def video_tokens(config, height: int, width: int, num_frames: int) -> int:
    """dit_tokens for a video of height x width x num_frames pixels."""
    s = SPATIAL_COMPRESSION
    return dit_tokens(config, latent_frames(num_frames), height // s, width // s)


def block_activation_bytes(config, tokens: int, batch: int, act_bytes: int = 2, gelu_in_place: bool = True) -> int:
    """Peak live tensors inside one block: the joint stream, its normed copy, q/k/v, the attention output
    and its projection; or the stream, the normed copy, the feed-forward's 4x hidden and its output projection
    (GELU in place, as on GPUs: transformer.gelu_runs_in_place), or the hidden and its GELU's 4x scratch (float32
    on the CPU). The larger of the two phases."""
    unit = batch * tokens * config.inner_dim * act_bytes
    attention_phase = unit * (2 + 3 + 1 + 1)
    feed_forward_phase = unit * (2 + 4 + (1 if gelu_in_place else 4))
    return max(attention_phase, feed_forward_phase)


def attention_bytes(config, tokens: int, batch: int, act_bytes: int = 2, materialised: bool = False) -> int:
    """Flash/memory-efficient SDPA keeps O(tokens) per head; the math path materialises heads x tokens^2."""
    if materialised:
        return batch * config.num_attention_heads * tokens * tokens * act_bytes
    return batch * tokens * config.inner_dim * act_bytes * 4


# The step cache keeps the previous step's modulated video input and the last full evaluation's residual
# (video and text) between steps, and a skipped step adds the residual to its input: asked for as three streams
# of the batch (a whole run's peak grew by one in the test that checks this bound).
STEP_CACHE_STREAMS = 3


def cast_weight_bytes(config, weight_dtype, dtype: torch.dtype) -> int:
    """Weights stored narrower than the compute dtype (fp8, or bf16 computed in fp32) are cast one layer at a
    time: the largest cast copy, a feed-forward Linear's weight, is alive beside the activations."""
    if weight_dtype is None or torch.empty((), dtype=weight_dtype).element_size() >= \
            torch.empty((), dtype=dtype).element_size():
        return 0
    return 4 * config.inner_dim * config.inner_dim * torch.empty((), dtype=dtype).element_size()


def sampling_memory_bytes(config, latent_frame_count: int, latent_height: int, latent_width: int, batch: int,
                          dtype: torch.dtype, step_cache: bool = False, device=None, weight_dtype=None) -> int:
    """Activation memory one DiT call needs beyond its weights (what the sampler asks ComfyUI to free):
    one block's peak on `device` (None: a GPU, as in the README's memory table), plus the step cache's tensors
    when it is on, plus a layer's weight cast for compute when `weight_dtype` is narrower than `dtype`."""
    from .transformer import gelu_runs_in_place

    tokens = dit_tokens(config, latent_frame_count, latent_height, latent_width)
    act_bytes = torch.empty((), dtype=dtype).element_size()
    cache = STEP_CACHE_STREAMS * batch * tokens * config.inner_dim * act_bytes if step_cache else 0
    in_place = device is None or gelu_runs_in_place(device, dtype)
    return (block_activation_bytes(config, tokens, batch, act_bytes, gelu_in_place=in_place) + cache
            + cast_weight_bytes(config, weight_dtype, dtype))


class MetaPeak(TorchDispatchMode):
    """Peak bytes of the tensors alive at once among those made while it is active (views and in-place results
    make none). Run a model on the `meta` device inside it to measure an activation peak with no memory or
    compute (checked once on the CPU: a real decode's resident peak was 1145 MiB, MetaPeak's 1144 MiB)."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):
            return out
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                size = t.numel() * t.element_size()
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._freed, size)
        return out

    def _freed(self, size: int) -> None:
        self.live -= size


# Measured with MetaPeak on the released VAE: a decode peaks at 15,600-18,100 bytes per pixel of its largest
# region (a tile, or the whole frame) per activation byte (3 to 13 latent frames; the causal conv cache and
# one frame chunk's full-resolution activations); a one-frame encode at 2,660.
VAE_DECODE_BYTES_PER_PIXEL = 20000
VAE_ENCODE_BYTES_PER_PIXEL = 3000


def vae_decode_bytes(region_height: int, region_width: int, act_bytes: int, frames: int = 0, height: int = 0,
                     width: int = 0) -> int:
    """Memory of a VAE decode whose largest decoded region (one tile, or the frame) is this size, plus the
    decoded video of frames x height x width (its tiles and the whole, and the float32 copy handed back)."""
    video = frames * 3 * height * width * (2 * act_bytes + 4)
    return VAE_DECODE_BYTES_PER_PIXEL * region_height * region_width * act_bytes + video


def measure_vae_decode_peak(vae, height: int, width: int, latent_frames: int, tiling: bool = False,
                            tile_size=None) -> int:
    """MetaPeak of a decode by `vae` (built on the meta device, in its activation dtype) of latent_frames latent
    frames of a height x width video, untiled or in tiles, as decode_raw runs it (the float32 video included)."""
    from .vae import configure_tiling

    p = next(vae.parameters())
    configure_tiling(vae, tiling, tile_size)
    z = torch.empty(1, vae.config.latent_channels, latent_frames, height // 8, width // 8, device=p.device,
                    dtype=p.dtype)
    meter = MetaPeak()
    with torch.no_grad(), meter:
        vae.decode(z).sample.float()
    return meter.peak


def vae_encode_bytes(region_height: int, region_width: int, act_bytes: int, height: int = 0, width: int = 0) -> int:
    """Memory of encoding one frame (the face frame) whose largest encoded region (one tile, or the frame) is this
    size, plus the height x width frame's pixels and its tiles' latents."""
    return VAE_ENCODE_BYTES_PER_PIXEL * region_height * region_width * act_bytes + 2 * 3 * height * width * act_bytes
