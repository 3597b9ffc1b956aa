"""Dynamic classifier-free guidance (CogVideoX/EchoVideo schedule)."""
import math

MAX_GUIDANCE_SCALE = 30.0  # the nodes' and the CLI's limit (the reference uses 6)


def dynamic_guidance_scale(guidance_scale: float, timestep: int, num_inference_steps: int) -> float:
    """Scale at integer scheduler timestep t: 1 + g (1 - cos(pi ((T - t) / T)^5)) / 2, T = steps.

    Python float64, as the reference: the cosine's argument is huge, float32 would give other scales."""
    t = int(timestep)
    steps = num_inference_steps
    return 1 + guidance_scale * (1 - math.cos(math.pi * ((steps - t) / steps) ** 5.0)) / 2


def guidance_scale_at(guidance_scale: float, timestep: int, num_inference_steps: int, dynamic: bool) -> float:
    return dynamic_guidance_scale(guidance_scale, timestep, num_inference_steps) if dynamic else guidance_scale


def guidance_is_identity(scale: float) -> bool:
    """True where CFG leaves the conditional prediction as it is: |scale - 1| within 1e-9 (ComfyUI's own
    test for skipping the unconditional pass). uncond + scale (cond - uncond) then equals cond within float32
    rounding, so that step needs no unconditional prediction. The dynamic schedule lands there at some steps
    (e.g. t = 666 of 6 steps)."""
    return math.isclose(scale, 1.0)


def combine_guidance(pred_uncond, pred_cond, scale: float):
    return pred_uncond + scale * (pred_cond - pred_uncond)
