"""Activation memory of the DiT: one home for the estimate the sampler asks ComfyUI to free and the
memory plan (benchmarks/memory_plan.py) prints."""
import torch

from .video import SPATIAL_COMPRESSION, latent_frames


def dit_tokens(config, latent_frame_count: int, latent_height: int, latent_width: int) -> int:
    """Joint sequence length: text tokens + video patches."""
    p = config.patch_size
    return config.max_text_seq_length + latent_frame_count * (latent_height // p) * (latent_width // p)


def video_tokens(config, height: int, width: int, num_frames: int) -> int:
    """dit_tokens for a video of height x width x num_frames pixels."""
    s = SPATIAL_COMPRESSION
    return dit_tokens(config, latent_frames(num_frames), height // s, width // s)


def block_activation_bytes(config, tokens: int, batch: int, act_bytes: int = 2) -> int:
    """Peak live tensors inside one block: the joint stream, its normed copy, q/k/v, the attention output
    and its projection; or the stream, the normed copy, the feed-forward's 4x hidden and its GELU
    intermediate. The larger of the two phases."""
    unit = batch * tokens * config.inner_dim * act_bytes
    attention_phase = unit * (2 + 3 + 1 + 1)
    feed_forward_phase = unit * (2 + 4 + 4)
    return max(attention_phase, feed_forward_phase)


def attention_bytes(config, tokens: int, batch: int, act_bytes: int = 2, materialised: bool = False) -> int:
    """Flash/memory-efficient SDPA keeps O(tokens) per head; the math path materialises heads x tokens^2."""
    if materialised:
        return batch * config.num_attention_heads * tokens * tokens * act_bytes
    return batch * tokens * config.inner_dim * act_bytes * 4


# The step cache keeps the previous step's modulated video input and the last full evaluation's residual
# (video and text), and a skipped step adds the residual to its input: about three streams of the batch.
STEP_CACHE_STREAMS = 3


def sampling_memory_bytes(config, latent_frame_count: int, latent_height: int, latent_width: int, batch: int,
                          dtype: torch.dtype, step_cache: bool = False) -> int:
    """Activation memory one DiT call needs beyond its weights (what the sampler asks ComfyUI to free):
    one block's peak, as in the README's memory table, plus the step cache's tensors when it is on."""
    tokens = dit_tokens(config, latent_frame_count, latent_height, latent_width)
    act_bytes = torch.empty((), dtype=dtype).element_size()
    cache = STEP_CACHE_STREAMS * batch * tokens * config.inner_dim * act_bytes if step_cache else 0
    return block_activation_bytes(config, tokens, batch, act_bytes) + cache


# The decoder's conv cache carried between frame chunks is about 4,060 bytes per output pixel per activation
# byte (memory plan: 3.08 GiB at 480x848 in bf16); one 2-latent-frame chunk adds about three full-resolution
# 128-channel tensors of 8 frames (about 3,000 more).
VAE_DECODE_BYTES_PER_PIXEL = 7000


def vae_decode_bytes(region_height: int, region_width: int, act_bytes: int) -> int:
    """Activation memory of a VAE decode whose largest decoded region (one tile, or the frame) is this size."""
    return VAE_DECODE_BYTES_PER_PIXEL * region_height * region_width * act_bytes
