"""Speed and memory options keep the golden numbers (exact options at fp32 tolerance)."""
import pytest
import torch

from echovideo import attention, sampling, tiny
from echovideo.compile import compile_blocks
from echovideo.offload import disable_block_swap, enable_block_swap
from echovideo.step_cache import StepCache, rescaled_change
from golden import Golden, assert_close_scaled, golden_paths, level1_output
from test_golden import build_dit


@pytest.fixture(scope="module", params=golden_paths())
def golden(request):
    return Golden(request.param)


def math_attention(q, k, v):
    w = torch.softmax((q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5, dim=-1)
    return w @ v


@pytest.mark.golden
def test_pluggable_attention_backend_matches_golden(golden):
    attention.register_attention("test_math", math_attention)
    model = build_dit(golden)
    model.set_attention("test_math")
    assert_close_scaled(level1_output(model, golden), golden["transformer.out.model_output"], name="math attention")
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        model.set_attention("nope")


@pytest.mark.golden
def test_block_swap_matches_golden(golden):
    model = build_dit(golden)
    swap = enable_block_swap(model, blocks_on_offload=1, device="cpu", offload_device="cpu")
    assert swap.first_swapped == len(model.transformer_blocks) - 1
    assert_close_scaled(level1_output(model, golden), golden["transformer.out.model_output"], name="block swap")
    disable_block_swap(model, "cpu")
    with pytest.raises(ValueError, match="blocks_on_offload: got 99"):
        enable_block_swap(model, 99, "cpu")


@pytest.mark.golden
def test_compiled_block_compiles_once_and_matches(golden):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = compile_blocks(build_dit(golden), backend="aot_eager")
    out = level1_output(model, golden)
    assert_close_scaled(out, golden["transformer.out.model_output"], name="compiled")
    assert counters["stats"]["unique_graphs"] == 1  # one graph for all blocks
    torch._dynamo.reset()


def test_step_cache_skips_and_stays_close():
    """Tiny `large` preset, 50 steps: at threshold 1.0 at least 1.5x fewer DiT calls, final latents within
    1% of the uncached latents' scale; at threshold 0 nothing is skipped and the result is identical."""
    p = tiny.PRESETS["large"]
    torch.manual_seed(0)
    dit = tiny.tiny_dit(p)
    image_latents = torch.randn(1, (p.frames - 1) // 4 + 1, p.latent_channels, p.height // 8, p.width // 8) * 0.5
    pos, neg = torch.randn(1, p.text_len, p.text_dim), torch.randn(1, p.text_len, p.text_dim)
    run = dict(steps=50, guidance_scale=6.0, seed=3)
    plain = sampling.DiTCaller(dit)
    base = sampling.sample(dit, pos, neg, image_latents, dit_caller=plain, **run)
    exact = StepCache(dit, threshold=0.0)
    assert torch.equal(sampling.sample(dit, pos, neg, image_latents, dit_caller=exact, **run), base)
    assert exact.calls == 50 and exact.skipped == 0
    cache = StepCache(dit, threshold=1.0)
    cached = sampling.sample(dit, pos, neg, image_latents, dit_caller=cache, **run)
    assert plain.calls / cache.calls >= 1.5, (plain.calls, cache.calls)
    assert cache.calls + cache.skipped == 50
    dev = ((cached - base).abs().max() / base.abs().max()).item()
    print(f"step cache: {cache.calls} DiT calls of 50, max deviation {dev:.2e} of scale")
    assert dev < 0.01


def test_rescale_is_monotone_at_the_fit_edge():
    assert rescaled_change(0.1) >= 0.1
    assert rescaled_change(0.5) >= rescaled_change(0.3) >= rescaled_change(0.2)
    assert rescaled_change(0.1, None) == 0.1
