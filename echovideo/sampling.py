"""The sampling loop: CogVideoXDPMScheduler (v-prediction), CFG batched [unconditional, conditional],
dynamic CFG, one seeded CPU generator for the initial noise and every scheduler draw."""
import math
import numbers
from typing import Callable, Optional

import torch

from .errors import check
from .guidance import combine_guidance, guidance_is_identity, guidance_scale_at
from .host_memory import settle_heap
from .rope import rotary_embedding_for_video
from .scheduler import CogVideoXDPMScheduler
from .video import SPATIAL_COMPRESSION, TEMPORAL_COMPRESSION

RELEASED_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    trained_betas=None, clip_sample=False, set_alpha_to_one=True, steps_offset=0,
    prediction_type="v_prediction", clip_sample_range=1.0, sample_max_value=1.0,
    timestep_spacing="trailing", rescale_betas_zero_snr=True, snr_shift_scale=1.0)

# callback(step, total, denoised): after each step, with that step's estimate of the clean latents
# [1, F, C, h, w] (the scheduler's predicted original sample): what a preview shows
StepCallback = Callable[[int, int, torch.Tensor], None]


def make_scheduler(config: Optional[dict] = None) -> CogVideoXDPMScheduler:
    return CogVideoXDPMScheduler(**(config or RELEASED_SCHEDULER_CONFIG))


def compute_dtype_of(model) -> torch.dtype:
    """The dtype activations run in: the model's `compute_dtype` when set (the loaders set it), else the weights'."""
    if getattr(model, "compute_dtype", None) is not None:
        return model.compute_dtype
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype if p.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.bfloat16
    return torch.float32


def initial_noise(shape, generator: torch.Generator) -> torch.Tensor:
    """The initial latents' noise: the seeded generator's first draw (float32), on the generator's device
    (the nodes and the CLI pass a CPU generator, so a seed gives the same video on any GPU)."""
    return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)


ALL_ROWS = slice(None)
CONDITIONAL_ROW = slice(1, None)  # of the CFG batch [unconditional, conditional]


class DiTCaller:
    """Calls the DiT on the CFG batch, or on `rows` of it; counts calls (`cond_only_calls`: those that ran the
    conditional row alone, at steps whose guidance scale is 1). Subclassed by the step cache."""

    def __init__(self, model):
        self.model = model
        self.calls = 0
        self.cond_only_calls = 0

    def count(self, rows: slice) -> None:
        """Counts one DiT evaluation of `rows`."""
        self.calls += 1
        self.cond_only_calls += rows != ALL_ROWS

    def __call__(self, x, context, timestep, rope, step_index, num_steps, rows: slice = ALL_ROWS):
        self.count(rows)
        return self.model(x, context, timestep, rope)


@torch.no_grad()
def sample(model, positive_context: torch.Tensor, negative_context: Optional[torch.Tensor],
           image_latents: torch.Tensor, *, steps: int = 50, guidance_scale: float = 6.0,
           dynamic_cfg: bool = True, seed: int = 42, callback: Optional[StepCallback] = None,
           scheduler_config: Optional[dict] = None, dtype: Optional[torch.dtype] = None,
           dit_caller: Optional[DiTCaller] = None, generator: Optional[torch.Generator] = None,
           device: Optional[torch.device] = None, skip_unit_guidance: bool = True) -> torch.Tensor:
    """Denoised latents [1, F, C, h, w] (float32 holding float16 values: the reference casts its final latents to
    float16, so its frames decode from those).

    positive_context / negative_context: IITF-fused contexts [1, L, D] (negative: negative prompt,
    zero ArcFace embedding, SigLIP tokens of a black image). image_latents: face-frame latents
    [1, F, C, h, w]; the video size follows from them. guidance_scale <= 1 skips the unconditional branch;
    so does every step whose (dynamic) scale is 1 (`guidance_is_identity`) unless skip_unit_guidance=False.
    device: where the loop runs (default: the first weight's device; pass it when weights are partially
    offloaded). dtype: the activations' dtype (default: the model's compute dtype)."""
    cfg = model.config
    check(isinstance(steps, numbers.Integral) and not isinstance(steps, bool) and steps >= 1, "steps", steps,
          "an integer >= 1")
    steps = int(steps)
    check(isinstance(guidance_scale, (int, float)) and math.isfinite(guidance_scale), "guidance_scale",
          guidance_scale, "a finite number (<= 1 turns guidance off)")
    check(image_latents.dim() == 5 and image_latents.shape[0] == 1 and image_latents.shape[2] == cfg.out_channels
          and image_latents.shape[3] % cfg.patch_size == 0 and image_latents.shape[4] % cfg.patch_size == 0,
          "image_latents", tuple(image_latents.shape),
          f"[1, latent frames, {cfg.out_channels}, h, w] with h, w multiples of {cfg.patch_size}")
    check(positive_context.dim() == 3 and positive_context.shape[0] == 1, "positive_context",
          tuple(positive_context.shape), "[1, tokens, dim]")
    use_cfg = guidance_scale > 1.0
    if use_cfg:
        check(negative_context is not None and tuple(negative_context.shape) == tuple(positive_context.shape),
              "negative_context", None if negative_context is None else tuple(negative_context.shape),
              f"{tuple(positive_context.shape)} when guidance_scale > 1")

    device = torch.device(device) if device is not None else next(model.parameters()).device
    if device.type == "cpu":
        settle_heap()  # the steps' buffers reused, not faulted in again every call
    dtype = dtype or compute_dtype_of(model)
    _, n_lat, _, h, w = image_latents.shape
    rope = rotary_embedding_for_video(cfg.attention_head_dim, cfg.patch_size, h * SPATIAL_COMPRESSION,
                                      w * SPATIAL_COMPRESSION, (n_lat - 1) * TEMPORAL_COMPRESSION + 1, device=device)

    generator = generator or torch.Generator("cpu").manual_seed(int(seed))
    noise = initial_noise(image_latents.shape, generator)
    scheduler = make_scheduler(scheduler_config)
    scheduler.set_timesteps(steps, device="cpu")
    latents = (noise * scheduler.init_noise_sigma).to(device)

    contexts = torch.cat([negative_context, positive_context]) if use_cfg else positive_context
    contexts = contexts.to(device=device, dtype=dtype)
    batch = contexts.shape[0]
    image_in = image_latents.to(device=device, dtype=dtype).expand(batch, -1, -1, -1, -1)
    caller = dit_caller or DiTCaller(model)

    timesteps = scheduler.timesteps
    old_pred_original = None
    with torch.inference_mode():  # less per-op bookkeeping than no_grad: about 3% of a DiT call on CPU
        for i, t in enumerate(timesteps):
            scale = guidance_scale_at(guidance_scale, int(t), steps, dynamic_cfg) if use_cfg else 1.0
            rows = CONDITIONAL_ROW if use_cfg and skip_unit_guidance and guidance_is_identity(scale) else ALL_ROWS
            context = contexts[rows]
            n = context.shape[0]
            x = torch.cat([latents.to(dtype).expand(n, -1, -1, -1, -1), image_in[rows]], dim=2)
            pred = caller(x, context, t.expand(n).to(device), rope, i, len(timesteps), rows=rows).float()
            if use_cfg and rows == ALL_ROWS:
                uncond, cond = pred.chunk(2)
                pred = combine_guidance(uncond, cond, scale)
            latents, old_pred_original = scheduler.step(
                pred, old_pred_original, t, timesteps[i - 1] if i > 0 else None, latents,
                generator=generator, return_dict=False)
            latents = latents.float()
            if callback is not None:
                callback(i + 1, len(timesteps), old_pred_original)
    # float16 as the reference ends (also a normal tensor again, usable and changeable outside inference mode)
    return latents.half().float()
