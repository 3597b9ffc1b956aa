"""Step cache (TeaCache-style, optional): skips DiT evaluations whose timestep-modulated input barely
changed since the last full evaluation, reusing that evaluation's block residual.

TeaCache maps the input's relative change to an output change with a polynomial fitted offline for one
model (and one signal). Here the mapping is fitted online, on the run itself: between two full evaluations
the residual's change per unit of input change gives a rate, and a skipped step's error is estimated as
that rate times the input change accumulated since the last full evaluation, relative to the blocks'
output. So the threshold means the same on any checkpoint or size: the estimated relative (mean absolute)
error of the reused block output that a skipped step may carry."""
import torch

from .sampling import ALL_ROWS, DiTCaller

DEFAULT_THRESHOLD = 0.05
MAX_THRESHOLD = 1.0  # the node's and the CLI's range is 0 to this
DEFAULT_WARMUP_STEPS = 2  # two full evaluations calibrate the rate


def mean_abs(x: torch.Tensor) -> float:
    return x.abs().mean().item()


class StepCache(DiTCaller):
    """DiT caller for `sampling.sample` that skips the blocks while the estimated relative error of reusing
    the last residual stays below `threshold`. The first `warmup_steps` (at least 2) and the last step
    always run the full DiT. `estimates` records (step, estimated error) for each skipped step."""

    def __init__(self, model, threshold: float = DEFAULT_THRESHOLD, warmup_steps: int = DEFAULT_WARMUP_STEPS):
        super().__init__(model)
        self.threshold = float(threshold)
        self.warmup_steps = max(int(warmup_steps), 2)
        self.skipped = 0
        self.estimates = []
        self._previous_input = None  # modulated input of the previous step
        self._input_change = 0.0  # sum of mean |input change| since the last full evaluation
        self._last = None  # (video residual, context residual) of the last full evaluation
        self._rate = None  # estimated relative output error per unit of accumulated input change

    @torch.no_grad()
    def __call__(self, hidden_states, context, timestep, rope, step_index, num_steps, rows: slice = ALL_ROWS):
        model = self.model
        x, ctx, temb = model.embed(hidden_states, context, timestep)
        # every row of the batch holds the same video tokens: the first row's carry the signal
        modulated = model.modulated_video_input(x[:1], ctx[:1], temb[:1])
        if step_index > 0 and self._previous_input is not None and self._previous_input.shape == modulated.shape:
            self._input_change += mean_abs(modulated - self._previous_input)
        else:
            self._last = self._rate = None  # a new run or size: calibrate again
        self._previous_input = modulated
        if rows != ALL_ROWS:
            # a step that needs only some rows (guidance scale 1): evaluated in full; the cached residual stays
            # the whole batch's, and the input change keeps adding up since it
            self.count(rows)
            x_out, ctx_out = model.run_blocks(x, ctx, temb, rope)
            return model.head(x_out, ctx_out, temb, hidden_states.shape)
        estimate = None if self._rate is None else self._rate * self._input_change
        full = (step_index < self.warmup_steps or step_index == num_steps - 1 or estimate is None
                or estimate >= self.threshold)
        if not full:
            self.skipped += 1
            self.estimates.append((step_index, estimate))
            residual, ctx_residual = self._last
            return model.head(x + residual, ctx + ctx_residual, temb, hidden_states.shape)
        self.count(rows)
        x_out, ctx_out = model.run_blocks(x, ctx, temb, rope)
        residual = x_out - x
        if self._last is not None and self._input_change > 0:
            self._rate = mean_abs(residual - self._last[0]) / (self._input_change * max(mean_abs(x_out), 1e-12))
        self._last = (residual, ctx_out - ctx)
        self._input_change = 0.0
        return model.head(x_out, ctx_out, temb, hidden_states.shape)
