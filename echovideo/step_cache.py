"""Step cache (TeaCache-style, optional): skips DiT evaluations whose timestep-modulated input barely
changed since the last full evaluation, reusing that evaluation's block residual."""
import numpy as np
import torch

from .sampling import DiTCaller

# Polynomial mapping CogVideoX-5B's raw relative change to its output change (TeaCache's published fit,
# highest power first). Fitted on raw changes up to about 0.3; above that the raw value counts.
COGVIDEOX_5B_RESCALE = (-1.53880483e+03, 8.43202495e+02, -1.34363087e+02, 7.97131516e+00, -5.23162339e-02)
FIT_LIMIT = 0.3


def rescaled_change(raw: float, coefficients=COGVIDEOX_5B_RESCALE) -> float:
    if coefficients is None:
        return raw
    if raw <= FIT_LIMIT:
        return max(raw, float(np.polyval(coefficients, raw)))
    return max(raw, float(np.polyval(coefficients, FIT_LIMIT)))


class StepCache(DiTCaller):
    """Accumulates the relative L1 change of the first block's timestep-modulated input; while the sum
    stays below `threshold` the blocks are skipped and the cached residual is added instead. The first
    `warmup_steps` and the last step always run the full DiT."""

    def __init__(self, model, threshold: float = 0.3, warmup_steps: int = 1, rescale=COGVIDEOX_5B_RESCALE):
        super().__init__(model)
        self.rescale = rescale
        self.threshold = float(threshold)
        self.warmup_steps = int(warmup_steps)
        self.skipped = 0
        self._previous = None
        self._accumulated = 0.0
        self._residual = None

    def _modulated_input(self, x, ctx, temb):
        return self.model.modulated_video_input(x, ctx, temb)

    @torch.no_grad()
    def __call__(self, hidden_states, context, timestep, rope, step_index, num_steps):
        model = self.model
        x, ctx, temb = model.embed(hidden_states, context, timestep)
        modulated = self._modulated_input(x, ctx, temb)
        full = (step_index < self.warmup_steps or step_index == num_steps - 1 or self._residual is None
                or self._previous is None or self._previous.shape != modulated.shape)
        if not full:
            raw = ((modulated - self._previous).abs().mean() / self._previous.abs().mean().clamp_min(1e-12)).item()
            self._accumulated += rescaled_change(raw, self.rescale)
            full = self._accumulated >= self.threshold
        self._previous = modulated
        if full:
            self._accumulated = 0.0
            self.calls += 1
            x_out, ctx_out = model.run_blocks(x, ctx, temb, rope)
            self._residual = (x_out - x, ctx_out - ctx)
        else:
            self.skipped += 1
            x_out, ctx_out = x + self._residual[0], ctx + self._residual[1]
        return model.head(x_out, ctx_out, temb, hidden_states.shape)
