"""echovideo.scheduler against diffusers' CogVideoXDPMScheduler (the class the published pipeline samples with):
the same timesteps, alpha-bars, latents, x0 estimates and random draws, bit for bit, over its config options."""
import itertools

import numpy as np
import pytest
import torch
from diffusers import CogVideoXDPMScheduler as DiffusersScheduler

from echovideo import sampling
from echovideo.errors import EchoVideoInputError
from echovideo.scheduler import CogVideoXDPMScheduler

RELEASED = sampling.RELEASED_SCHEDULER_CONFIG
CONFIGS = {
    "released": RELEASED,
    "snr_shift_3": dict(RELEASED, snr_shift_scale=3.0),
    "leading_offset": dict(RELEASED, timestep_spacing="leading", steps_offset=1),
    "linspace": dict(RELEASED, timestep_spacing="linspace"),
    "epsilon": dict(RELEASED, rescale_betas_zero_snr=False, prediction_type="epsilon"),
    "linear_sample": dict(RELEASED, beta_schedule="linear", prediction_type="sample"),
    "cosine": dict(RELEASED, beta_schedule="squaredcos_cap_v2", rescale_betas_zero_snr=False),
    "trained_betas": dict(RELEASED, trained_betas=torch.linspace(1e-4, 2e-2, 1000).tolist()),
    "alpha_not_one": dict(RELEASED, set_alpha_to_one=False),
    "class_defaults": {},
}


def run_both(config, steps, shape=(1, 3, 4, 5, 6), dtype=torch.float32):
    ours, theirs = CogVideoXDPMScheduler(**config), DiffusersScheduler(**config)
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    assert torch.equal(ours.alphas_cumprod, theirs.alphas_cumprod)
    g_ours, g_theirs = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x_ours = x_theirs = torch.randn(shape, generator=torch.Generator().manual_seed(4)).to(dtype)
    old_ours = old_theirs = None
    outputs = torch.randn((len(ours.timesteps), *shape), generator=torch.Generator().manual_seed(5)).to(dtype)
    ts = theirs.timesteps
    for i, t in enumerate(ts):
        back = ts[i - 1] if i > 0 else None
        x_ours, old_ours = ours.step(outputs[i], old_ours, t, back, x_ours, generator=g_ours)
        x_theirs, old_theirs = theirs.step(outputs[i], old_theirs, t, back, x_theirs, generator=g_theirs,
                                           return_dict=False)
        assert torch.equal(old_ours, old_theirs), f"x0 estimate differs at step {i}"
        assert torch.equal(x_ours, x_theirs), f"latents differ at step {i}"
    assert torch.equal(g_ours.get_state(), g_theirs.get_state()), "a different number of random draws"
    return x_ours


# 61 and 103: the trailing grid gives these one extra step, at t = -1
@pytest.mark.parametrize("name,steps", list(itertools.product(CONFIGS, [1, 2, 3, 7, 50, 61, 103])))
def test_steps_equal_diffusers_bit_for_bit(name, steps):
    final = run_both(CONFIGS[name], steps)
    assert torch.isfinite(final).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("name", ["released", "epsilon", "cosine"])
def test_other_latent_dtypes_equal_diffusers_bit_for_bit(name, dtype):
    """In bf16/fp16 torch rounds a 0-dim float64 factor to the latents' dtype first: ours must do the same."""
    final = run_both(CONFIGS[name], 7, dtype=dtype)
    assert final.dtype == dtype


def test_config_as_saved_by_diffusers_is_accepted():
    """A scheduler_config.json carries _class_name and _diffusers_version; diffusers ignores such keys."""
    saved = dict(RELEASED, _class_name="CogVideoXDPMScheduler", _diffusers_version="0.31.0")
    run_both(saved, 3)


def test_numpy_integer_step_count_is_accepted():
    s = CogVideoXDPMScheduler(**RELEASED)
    s.set_timesteps(np.int64(6))
    assert s.num_inference_steps == 6 and type(s.num_inference_steps) is int and len(s.timesteps) == 6


def test_step_draws_noise_once_then_twice():
    """The released config at 4 steps: one draw on the first step, two on the middle ones, one on the last
    (prev_timestep < 0). Counted against a generator advanced by hand."""
    s = CogVideoXDPMScheduler(**RELEASED)
    s.set_timesteps(4)
    g = torch.Generator().manual_seed(0)
    x, old = torch.zeros(1, 2, 3), None
    ts = s.timesteps
    for i, t in enumerate(ts):
        x, old = s.step(torch.zeros(1, 2, 3), old, t, ts[i - 1] if i else None, x, generator=g)
    expected = torch.Generator().manual_seed(0)
    draws = 0
    while not torch.equal(expected.get_state(), g.get_state()):
        torch.randn(1, 2, 3, generator=expected)
        draws += 1
        assert draws < 20
    assert draws == 1 + 2 + 2 + 1


@pytest.mark.parametrize("steps", [5, 61])
def test_sample_uses_this_scheduler_and_matches_diffusers(monkeypatch, steps):
    """sample() with a zero DiT gives the same latents with diffusers' class swapped in for ours (61 steps: one
    more DiT call, at t = -1, as in the published pipeline)."""
    from echovideo import tiny

    p = tiny.PRESETS["shared"]
    dit = tiny.tiny_dit(p)

    class Zero(sampling.DiTCaller):
        def __call__(self, x, context, timestep, rope, step_index, num_steps, rows=sampling.ALL_ROWS):
            self.calls += 1
            return torch.full((x.shape[0], x.shape[1], p.latent_channels, *x.shape[3:]), 0.25)

    ctx = torch.randn(1, p.text_len, p.text_dim)
    lat = torch.randn(1, 2, p.latent_channels, 8, 8)
    caller = Zero(dit)
    ours = sampling.sample(dit, ctx, ctx, lat, steps=steps, seed=7, dit_caller=caller)
    assert torch.isfinite(ours).all() and caller.calls == steps + (steps == 61)
    monkeypatch.setattr(sampling, "CogVideoXDPMScheduler", DiffusersScheduler)
    theirs = sampling.sample(dit, ctx, ctx, lat, steps=steps, seed=7, dit_caller=Zero(dit))
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("config,name", [
    (dict(RELEASED, timestep_spacing="uniform"), "timestep_spacing"),
    (dict(RELEASED, prediction_type="flow"), "prediction_type"),
    (dict(RELEASED, beta_schedule="karras"), "beta_schedule"),
    (dict(RELEASED, clip_samples=True), "scheduler_config"),
])
def test_bad_config_names_the_key(config, name):
    with pytest.raises(EchoVideoInputError, match=name):
        CogVideoXDPMScheduler(**config)


@pytest.mark.parametrize("steps", [0, 1001, 2.5, True])
def test_bad_step_count_names_steps(steps):
    s = CogVideoXDPMScheduler(**RELEASED)
    with pytest.raises(EchoVideoInputError, match="steps"):
        s.set_timesteps(steps)


def test_step_before_set_timesteps_is_refused():
    s = CogVideoXDPMScheduler(**RELEASED)
    with pytest.raises(EchoVideoInputError, match="set_timesteps"):
        s.step(torch.zeros(1), None, 999, None, torch.zeros(1))
