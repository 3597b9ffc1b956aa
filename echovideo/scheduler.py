"""CogVideoXDPMScheduler (the DPM-Solver++ 2M SDE sampler of CogVideoX and EchoVideo), written for the
sampling loop: the same numbers and random draws as diffusers' class of that name, from the same config
dict, without its per-step bookkeeping. Each step's scalar coefficients are worked out once, in float64
0-dim tensors (so that the zero-SNR first step's infinities behave as they do there), and applied to the
latents as those 0-dim tensors, left of the latents (in bf16/fp16 torch rounds such a factor to the
latents' dtype first, as it does in diffusers).
"""
import math
import numbers
from typing import Optional, Tuple

import numpy as np
import torch

from .errors import check

CONFIG_DEFAULTS = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    trained_betas=None, clip_sample=True, set_alpha_to_one=True, steps_offset=0, prediction_type="epsilon",
    clip_sample_range=1.0, sample_max_value=1.0, timestep_spacing="leading", rescale_betas_zero_snr=False,
    snr_shift_scale=3.0)
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


def _cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """betas of the squared-cosine alpha-bar schedule (improved DDPM), capped at max_beta."""
    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    n = num_train_timesteps
    return torch.tensor([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)],
                        dtype=torch.float32)


def _zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """alpha-bar rescaled so the last timestep has zero SNR and the first keeps its value (arXiv 2305.08891)."""
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    return root ** 2


class CogVideoXDPMScheduler:
    def __init__(self, **config):
        config = {k: v for k, v in config.items() if not k.startswith("_")}  # _class_name etc., as diffusers
        unknown = sorted(set(config) - set(CONFIG_DEFAULTS))
        check(not unknown, "scheduler_config", unknown, "only keys of CogVideoXDPMScheduler's config: "
              + ", ".join(CONFIG_DEFAULTS))
        c = dict(CONFIG_DEFAULTS, **config)
        check(c["beta_schedule"] in BETA_SCHEDULES or c["trained_betas"] is not None, "beta_schedule",
              c["beta_schedule"], "one of " + ", ".join(BETA_SCHEDULES))
        check(c["prediction_type"] in PREDICTION_TYPES, "prediction_type", c["prediction_type"],
              "one of " + ", ".join(PREDICTION_TYPES))
        check(c["timestep_spacing"] in TIMESTEP_SPACINGS, "timestep_spacing", c["timestep_spacing"],
              "one of " + ", ".join(TIMESTEP_SPACINGS))
        self.config = c
        n = c["num_train_timesteps"]
        if c["trained_betas"] is not None:
            betas = torch.tensor(c["trained_betas"], dtype=torch.float32)
        elif c["beta_schedule"] == "linear":
            betas = torch.linspace(c["beta_start"], c["beta_end"], n, dtype=torch.float32)
        elif c["beta_schedule"] == "scaled_linear":
            betas = torch.linspace(c["beta_start"] ** 0.5, c["beta_end"] ** 0.5, n, dtype=torch.float64) ** 2
        else:
            betas = _cosine_betas(n)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        shift = c["snr_shift_scale"]
        alphas_cumprod = alphas_cumprod / (shift + (1 - shift) * alphas_cumprod)
        if c["rescale_betas_zero_snr"]:
            alphas_cumprod = _zero_terminal_snr(alphas_cumprod)
        self.alphas_cumprod = alphas_cumprod
        self.final_alpha_cumprod = torch.tensor(1.0) if c["set_alpha_to_one"] else alphas_cumprod[0]
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = torch.arange(n - 1, -1, -1, dtype=torch.int64)

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        c = self.config
        n = c["num_train_timesteps"]
        check(isinstance(num_inference_steps, numbers.Integral) and not isinstance(num_inference_steps, bool)
              and 1 <= num_inference_steps <= n, "steps",
              num_inference_steps, f"an integer from 1 to {n} (the scheduler's training timesteps)")
        self.num_inference_steps = num_inference_steps = int(num_inference_steps)
        # numpy's arange/linspace and round-half-even, as diffusers computes them (arXiv 2305.08891, table 2)
        if c["timestep_spacing"] == "linspace":
            ts = np.linspace(0, n - 1, num_inference_steps).round()[::-1].astype(np.int64)
        elif c["timestep_spacing"] == "leading":
            ts = (np.arange(0, num_inference_steps) * (n // num_inference_steps))[::-1].astype(np.int64)
            ts = ts + c["steps_offset"]
        else:  # trailing
            ts = np.round(np.arange(n, 0, -n / num_inference_steps)).astype(np.int64) - 1
        self.timesteps = torch.from_numpy(ts.copy()).to(device)

    def _alpha_bar_prev(self, prev_timestep: int) -> torch.Tensor:
        return self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod

    def _step_coefficients(self, timestep: int, timestep_back: Optional[int]) -> dict:
        """Scalars of one step: the x0 estimate's (sqrt(a_t), sqrt(1 - a_t)), DPM-Solver++ 2M's multipliers
        of the sample, of the x0 estimate (and of the previous one) and of the noise."""
        prev_timestep = timestep - self.config["num_train_timesteps"] // self.num_inference_steps
        # the trailing grid's float steps give some step counts (61, 103, 121, ...) one extra step at t = -1; like
        # diffusers, index it from the end (the last alpha-bar, 0 at zero terminal SNR), not as "before t = 0"
        a_t, a_prev = self.alphas_cumprod[timestep], self._alpha_bar_prev(prev_timestep)

        def log_snr_half(a):  # lambda = log(sqrt(a / (1 - a)))
            return ((a / (1 - a)) ** 0.5).log()

        lam = log_snr_half(a_t)
        h = log_snr_half(a_prev) - lam
        k = dict(prev_timestep=prev_timestep, sqrt_a=a_t ** 0.5, sqrt_1ma=(1 - a_t) ** 0.5,
                 sample=((1 - a_prev) / (1 - a_t)) ** 0.5 * (-h).exp(),
                 x0=(-2 * h).expm1() * a_prev ** 0.5,
                 noise=(1 - a_prev) ** 0.5 * (1 - (-2 * h).exp()) ** 0.5)
        if timestep_back is not None:
            r = (lam - log_snr_half(self.alphas_cumprod[timestep_back])) / h
            k.update(x0_now=1 + 1 / (2 * r), x0_old=1 / (2 * r))
        return k

    def _x0_estimate(self, model_output, sample, k) -> torch.Tensor:
        kind = self.config["prediction_type"]
        if kind == "v_prediction":
            return k["sqrt_a"] * sample - k["sqrt_1ma"] * model_output
        if kind == "epsilon":
            return (sample - k["sqrt_1ma"] * model_output) / k["sqrt_a"]
        return model_output

    def step(self, model_output: torch.Tensor, old_pred_original_sample: Optional[torch.Tensor], timestep,
             timestep_back, sample: torch.Tensor, generator: Optional[torch.Generator] = None,
             return_dict: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """(the next latents, this step's x0 estimate). Draws latent-shaped noise from `generator` once, and
        a second time when a previous x0 estimate is given and this is not the last step."""
        check(self.num_inference_steps is not None, "scheduler", "no timesteps", "set_timesteps(steps) first")
        check(not return_dict, "return_dict", return_dict, "False (this scheduler returns a tuple)")
        timestep = int(timestep)
        timestep_back = None if timestep_back is None else int(timestep_back)
        k = self._step_coefficients(timestep, timestep_back)
        pred_original = self._x0_estimate(model_output, sample, k)
        noise = self._noise(sample, generator)
        if old_pred_original_sample is None or k["prev_timestep"] < 0:  # first-order step
            return k["sample"] * sample - k["x0"] * pred_original + k["noise"] * noise, pred_original
        denoised = k["x0_now"] * pred_original - k["x0_old"] * old_pred_original_sample
        noise = self._noise(sample, generator)  # the first draw is discarded, as the published sampler does
        return k["sample"] * sample - k["x0"] * denoised + k["noise"] * noise, pred_original

    @staticmethod
    def _noise(sample: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        """Drawn on the generator's device, then moved to the sample's."""
        where = generator.device if generator is not None else sample.device
        return torch.randn(sample.shape, generator=generator, device=where, dtype=sample.dtype).to(sample.device)
