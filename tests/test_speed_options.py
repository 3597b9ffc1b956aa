"""Speed and memory options keep the golden numbers (exact options at fp32 tolerance)."""
import pytest
import torch

from echovideo import attention, sampling, tiny
from echovideo.compile import compile_blocks
from echovideo.errors import EchoVideoInputError
from echovideo.offload import disable_block_swap, enable_block_swap
from echovideo.step_cache import DEFAULT_THRESHOLD, StepCache, mean_abs
from golden import Golden, assert_close_scaled, golden_params, level1_output
from test_golden import build_dit


@pytest.fixture(scope="module", params=golden_params())
def golden(request):
    return Golden(request.param)


def math_attention(q, k, v):
    w = torch.softmax((q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5, dim=-1)
    return w @ v


@pytest.mark.golden
def test_pluggable_attention_backend_matches_golden(golden, monkeypatch):
    monkeypatch.setitem(attention._BACKENDS, "test_math", math_attention)  # gone again for later tests' dropdowns
    attention.register_attention("test_math", math_attention)
    model = build_dit(golden)
    model.set_attention("test_math")
    assert_close_scaled(level1_output(model, golden), golden["transformer.out.model_output"], name="math attention")
    with pytest.raises(EchoVideoInputError, match="attention: got 'nope', needs one of .*sdpa"):
        model.set_attention("nope")


def test_missing_sage_is_named_with_the_fix(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sageattention", None)  # import fails as if not installed
    with pytest.raises(EchoVideoInputError, match="attention: got 'sage', needs the sageattention package.*sdpa"):
        attention.get_attention("sage")


def test_broken_sage_install_is_named_not_raised(monkeypatch):
    """An installed sageattention whose import fails with something other than ImportError (e.g. a CUDA library
    that does not load) leaves it out of the choices and gets the input error, not an escaping OSError."""
    import sys

    class BrokenSage:
        def find_spec(self, name, path=None, target=None):
            if name == "sageattention":
                raise OSError("libcuda.so.1: cannot open shared object file")
            return None

    monkeypatch.delitem(sys.modules, "sageattention", raising=False)
    monkeypatch.setattr(sys, "meta_path", [BrokenSage()] + sys.meta_path)
    assert "sage" not in attention.available_attention()
    with pytest.raises(EchoVideoInputError, match=r"attention: got 'sage', needs a sageattention that imports "
                                                  r"\(it raised OSError: libcuda.*reinstall it\).*sdpa"):
        attention.get_attention("sage")


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


def _cache_run(p, steps=50):
    torch.manual_seed(0)
    dit = tiny.tiny_dit(p)
    image_latents = torch.randn(1, (p.frames - 1) // 4 + 1, p.latent_channels, p.height // 8, p.width // 8) * 0.5
    pos, neg = torch.randn(1, p.text_len, p.text_dim), torch.randn(1, p.text_len, p.text_dim)
    run = dict(steps=steps, guidance_scale=6.0, seed=3)
    return dit, lambda caller: sampling.sample(dit, pos, neg, image_latents, dit_caller=caller, **run)


def test_step_cache_default_skips_and_stays_close():
    """Tiny `large` preset, 50 steps: at the default threshold at least 1.5x fewer DiT calls, final latents
    within 1% of the uncached latents' scale; at threshold 0 nothing is skipped and the result is identical;
    a reused cache object calibrates again and repeats its run."""
    dit, run = _cache_run(tiny.PRESETS["large"])
    plain = sampling.DiTCaller(dit)
    base = run(plain)
    exact = StepCache(dit, threshold=0.0)
    assert torch.equal(run(exact), base)
    assert exact.calls == 50 and exact.skipped == 0
    cache = StepCache(dit)
    assert cache.threshold == DEFAULT_THRESHOLD
    cached = run(cache)
    assert plain.calls / cache.calls >= 1.5, (plain.calls, cache.calls)
    assert cache.calls + cache.skipped == 50
    assert 49 not in {step for step, _ in cache.estimates}  # the last step is always a full evaluation
    dev = ((cached - base).abs().max() / base.abs().max()).item()
    print(f"step cache: {cache.calls} DiT calls of 50, max deviation {dev:.2e} of scale")
    assert dev < 0.01
    calls = cache.calls
    assert torch.equal(run(cache), cached) and cache.calls == 2 * calls


def test_step_cache_keeps_its_calibration_across_a_unit_guidance_step():
    """6 steps at g = 6: step 2 (t = 666) has guidance scale 1 and runs the conditional row alone, in full; the
    cache neither skips nor recalibrates there, so with a huge threshold steps 3 and 4 reuse the residual of
    step 1's whole batch (a reset at step 2 would leave step 3 without a rate, so it would run in full)."""
    dit, run = _cache_run(tiny.PRESETS["shared"], steps=6)
    plain = sampling.DiTCaller(dit)
    base = run(plain)
    assert plain.calls == 6 and plain.cond_only_calls == 1
    exact = StepCache(dit, threshold=0.0)
    assert torch.equal(run(exact), base) and exact.calls == 6 and exact.cond_only_calls == 1
    loose = StepCache(dit, threshold=1e9)
    run(loose)
    assert [s for s, _ in loose.estimates] == [3, 4] and loose.calls == 4 and loose.cond_only_calls == 1


def test_step_cache_memory_estimate_covers_what_the_cache_adds():
    """With the step cache on, the Sampler asks ComfyUI for STEP_CACHE_STREAMS more activation streams: the
    whole sampling run's peak (MetaPeak, skipping steps) grows by more than nothing and no more than that."""
    from echovideo.memory import STEP_CACHE_STREAMS, MetaPeak, dit_tokens, sampling_memory_bytes

    p = tiny.PRESETS["shared"]
    dit, run = _cache_run(p, steps=8)

    def peak(caller):
        meter = MetaPeak()
        with meter:
            run(caller)
        return meter.peak

    plain = peak(sampling.DiTCaller(dit))
    cache = StepCache(dit, threshold=1.0, warmup_steps=2)
    added = peak(cache) - plain
    assert cache.skipped > 0
    frames, h, w = (p.frames - 1) // 4 + 1, p.height // 8, p.width // 8
    stream = 2 * dit_tokens(dit.config, frames, h, w) * dit.config.inner_dim * 4  # CFG batch, float32
    assert 0 < added <= STEP_CACHE_STREAMS * stream
    asked = (sampling_memory_bytes(dit.config, frames, h, w, batch=2, dtype=torch.float32, step_cache=True)
             - sampling_memory_bytes(dit.config, frames, h, w, batch=2, dtype=torch.float32))
    assert asked == STEP_CACHE_STREAMS * stream >= added


class _Checked(StepCache):
    """Also runs the blocks on skipped steps and records the true relative error of the reused output."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.true_errors = []

    def __call__(self, hidden_states, context, timestep, rope, step_index, num_steps, rows=sampling.ALL_ROWS):
        skipped = self.skipped
        out = super().__call__(hidden_states, context, timestep, rope, step_index, num_steps, rows)
        if self.skipped > skipped:
            x, ctx, temb = self.model.embed(hidden_states, context, timestep)
            reused = x + self._last[0]
            # what the skipped step returned is the head of exactly this reuse, so the error below is its error
            assert torch.equal(out, self.model.head(reused, ctx + self._last[1], temb, hidden_states.shape))
            x_out, _ = self.model.run_blocks(x, ctx, temb, rope)
            self.true_errors.append(mean_abs(x_out - reused) / mean_abs(x_out))
        return out


@pytest.mark.parametrize("preset,threshold", [("large", 0.01), ("large", DEFAULT_THRESHOLD), ("shared", 0.02)])
def test_step_cache_error_estimate_bounds_true_error(preset, threshold):
    """The online error estimate does what the threshold promises: every skipped step's true relative error
    of the reused block output stays within 1.5x the threshold; the first skip comes only after calibration."""
    dit, run = _cache_run(tiny.PRESETS[preset], steps=30)
    cache = _Checked(dit, threshold=threshold)
    run(cache)
    assert cache.skipped > 0 and len(cache.true_errors) == cache.skipped
    assert min(step for step, _ in cache.estimates) >= 2
    assert all(est < threshold for _, est in cache.estimates)
    assert max(cache.true_errors) <= 1.5 * threshold, (max(cache.true_errors), threshold)


def test_cpu_gelu_equals_torch_tanh_gelu():
    """The CPU GELU (sigmoid form, fewer passes) is torch's tanh GELU, also where it saturates or overflows."""
    import torch.nn.functional as F

    from echovideo.transformer import gelu_tanh

    x = torch.cat([torch.randn(4096) * 3, torch.tensor([0.0, -0.0, 1e-30, -40.0, 40.0, -1e20, 1e20, 3e38])])
    expected = F.gelu(x, approximate="tanh")
    got = gelu_tanh(x.clone())
    torch.testing.assert_close(got, expected, rtol=2e-6, atol=1e-6)
    for dtype in (torch.bfloat16, torch.float16):
        y = x.to(dtype)
        # torch's own kernel, in place on its input (a fresh hidden layer in the FF): bit-identical
        torch.testing.assert_close(gelu_tanh(y.clone()), F.gelu(y, approximate="tanh"), rtol=0, atol=0,
                                   equal_nan=True)


needs_onednn_linear = pytest.mark.skipif(
    __import__("echovideo.ops", fromlist=["_linear_pointwise"])._linear_pointwise is None
    or not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN linear_pointwise")


@needs_onednn_linear
def test_fused_linear_gelu_matches_linear_then_gelu(monkeypatch):
    """The oneDNN Linear+GELU path equals torch's linear then tanh GELU (also for strided and saturating inputs),
    and the DiT's FF takes it in CPU float32 inference."""
    import torch.nn.functional as F

    from echovideo import ops
    from echovideo.transformer import FeedForward

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 96)
    x = torch.randn(3, 40, 32) * 4
    x[0, 0] = 60.0
    x[0, 1] = -60.0
    with torch.inference_mode():
        for inp in (x, x.transpose(0, 1), x[:, ::2]):
            fused = ops.fused_linear_gelu_tanh(linear, inp)
            assert fused is not None
            torch.testing.assert_close(fused, F.gelu(F.linear(inp, linear.weight, linear.bias), approximate="tanh"),
                                       rtol=1e-5, atol=1e-5)
        calls = []
        real = ops._linear_pointwise
        monkeypatch.setattr(ops, "_linear_pointwise", lambda *a: calls.append(a[3:]) or real(*a))
        ff = FeedForward(32, torch.nn, None, None)
        out = ff(x)
        assert calls == [("gelu", [], "tanh"), ("none", [], "")]  # the hidden layer fused, then the output layer
        torch.testing.assert_close(out, ff.net[2](F.gelu(ff.net[0].proj(x), approximate="tanh")), rtol=1e-5, atol=1e-5)


@needs_onednn_linear
def test_fused_linear_gelu_falls_back_once_when_onednn_refuses(monkeypatch):
    """A oneDNN build that refuses the fused call gives the unfused result, and is not asked again."""
    from echovideo import ops
    from echovideo.transformer import FeedForward

    calls = []

    def refuse(*args):
        calls.append(args)
        raise RuntimeError("could not create a primitive descriptor")

    monkeypatch.setattr(ops, "_linear_pointwise", refuse)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    ff, x = FeedForward(16, torch.nn, None, None), torch.randn(2, 5, 16)
    with torch.inference_mode():
        expected = ff.net[2](torch.nn.functional.gelu(ff.net[0].proj(x), approximate="tanh"))
        torch.testing.assert_close(ff(x), expected, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ff(x), expected, rtol=1e-6, atol=1e-6)
    assert len(calls) == 1 and ops._linear_pointwise is None
    with torch.inference_mode():  # the plain projections fall back too
        torch.testing.assert_close(ops.linear(ff.net[2], x.repeat(1, 1, 4)), ff.net[2](x.repeat(1, 1, 4)))
    assert len(calls) == 1


@needs_onednn_linear
def test_fused_linear_gelu_stays_after_running_out_of_ram(monkeypatch):
    """A host out-of-memory error inside the fused call is raised as it is; the fused path is kept for later."""
    from echovideo import ops
    from echovideo.transformer import FeedForward

    def out_of_ram(*args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 123 bytes")

    monkeypatch.setattr(ops, "_linear_pointwise", out_of_ram)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    ff, x = FeedForward(16, torch.nn, None, None), torch.randn(2, 5, 16)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="DefaultCPUAllocator"):
        ff(x)
    assert ops._linear_pointwise is out_of_ram


@needs_onednn_linear
def test_fused_linear_gelu_declines_where_it_does_not_apply(monkeypatch):
    """Autograd, other dtypes, ComfyUI-style casting layers, oneDNN switched off and AVX2-only CPUs keep the
    plain path."""
    from echovideo import ops

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    linear = torch.nn.Linear(8, 16)
    x = torch.randn(2, 8)
    assert ops.fused_linear_gelu_tanh(linear, x) is None  # grad mode, weights need grad
    with torch.no_grad():
        assert ops.fused_linear_gelu_tanh(linear, x) is not None
        assert ops.fused_linear_gelu_tanh(linear, x.bfloat16()) is None
        assert ops.fused_linear_gelu_tanh(torch.nn.Linear(8, 16, dtype=torch.bfloat16), x) is None
        assert ops.fused_linear_gelu_tanh(ops.upcast_ops.Linear(8, 16), x) is None  # overridden forward
        hooked = torch.nn.Linear(8, 16)
        handle = hooked.register_forward_pre_hook(lambda module, args: None)
        assert ops.fused_linear_gelu_tanh(hooked, x) is None
        handle.remove()
        hooked.register_forward_hook(lambda module, args, out: None)
        assert ops.fused_linear_gelu_tanh(hooked, x) is None
        class Marked(torch.Tensor):
            pass

        wrapped = torch.nn.Linear(8, 16)
        wrapped.weight = torch.nn.Parameter(wrapped.weight.detach().as_subclass(Marked), requires_grad=False)
        assert ops.fused_linear_gelu_tanh(wrapped, x) is None
        patched = torch.nn.Linear(8, 16)
        patched.forward = lambda inp: inp  # e.g. an offload library's per-instance wrapper
        assert ops.fused_linear_gelu_tanh(patched, x) is None
        with torch.backends.mkldnn.flags(enabled=False):
            assert ops.fused_linear_gelu_tanh(linear, x) is None
        for capability in ("AVX2", "DEFAULT"):  # oneDNN's AVX2 GELU epilogue is slower than a separate GELU
            monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
            assert ops.fused_linear_gelu_tanh(linear, x) is None


@needs_onednn_linear
def test_ff_on_an_avx2_cpu_runs_linear_then_gelu(monkeypatch):
    """Where the fused call does not pay off, the FF never asks for it (only the plain output layer goes to oneDNN)
    and gives the unfused result."""
    from echovideo import ops
    from echovideo.transformer import FeedForward

    calls = []
    real = ops._linear_pointwise
    monkeypatch.setattr(ops, "_linear_pointwise", lambda *a: calls.append(a) or real(*a))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    torch.manual_seed(0)
    ff, x = FeedForward(16, torch.nn, None, None), torch.randn(2, 5, 16)
    with torch.inference_mode():
        out = ff(x)
        expected = ff.net[2](torch.nn.functional.gelu(ff.net[0].proj(x), approximate="tanh"))
    assert [c[3:] for c in calls] == [("none", [], "")]
    torch.testing.assert_close(out, expected, rtol=2e-6, atol=1e-6)


@needs_onednn_linear
def test_onednn_linear_matches_torch_linear_and_declines_where_it_does_not_apply(monkeypatch):
    """ops.linear: oneDNN's matmul in float32 CPU inference, equal to torch's linear to float32 rounding (strided
    inputs and bias-free layers too), and the module's own call wherever the oneDNN path does not apply."""
    import torch.nn.functional as F

    from echovideo import ops

    calls = []
    real = ops._linear_pointwise
    monkeypatch.setattr(ops, "_linear_pointwise", lambda *a: calls.append(a[3:]) or real(*a))
    torch.manual_seed(0)
    x = torch.randn(3, 40, 64)
    for layer in (torch.nn.Linear(64, 48), torch.nn.Linear(64, 48, bias=False)):
        with torch.inference_mode():
            for inp in (x, x.transpose(0, 1), x[:, ::2]):
                calls.clear()
                out = ops.linear(layer, inp)
                assert calls == [("none", [], "")]
                assert out.shape == inp.shape[:-1] + (48,)
                torch.testing.assert_close(out, F.linear(inp, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
    calls.clear()
    layer = torch.nn.Linear(64, 48)
    out = ops.linear(layer, x)  # autograd: the module's own call, with a graph
    assert out.requires_grad and calls == []
    with torch.no_grad():
        casting = ops.upcast_ops.Linear(64, 48, dtype=torch.bfloat16)
        casting.weight.copy_(layer.weight)
        casting.bias.copy_(layer.bias)
        torch.testing.assert_close(ops.linear(casting, x), casting(x))
        as_double = torch.nn.Linear(64, 48, dtype=torch.float64)
        torch.testing.assert_close(ops.linear(as_double, x.double()), as_double(x.double()))
        with torch.backends.mkldnn.flags(enabled=False):
            torch.testing.assert_close(ops.linear(layer, x), layer(x))
    assert calls == []


def test_sampling_memory_estimate_matches_memory_plan():
    """The sampler's request to ComfyUI and the README's memory table come from one estimate."""
    from echovideo.config import RELEASED_CONFIG
    from echovideo.memory import block_activation_bytes, sampling_memory_bytes, video_tokens

    cfg = RELEASED_CONFIG
    tokens = video_tokens(cfg, 480, 848, 49)
    assert tokens == 226 + 13 * 30 * 53  # text + latent frames x (480/16) x (848/16) patches
    need = sampling_memory_bytes(cfg, 13, 60, 106, batch=2, dtype=torch.bfloat16)
    assert need == block_activation_bytes(cfg, tokens, 2, act_bytes=2)
    assert abs(need / 2 ** 30 - 1.67) < 0.01  # the README table's "block b=2" at 480x848x49
    assert sampling_memory_bytes(cfg, 13, 60, 106, batch=1, dtype=torch.float32) == need  # half batch, twice bytes


def test_sampler_runs_in_the_models_compute_dtype():
    """bf16-stored weights with an fp32 compute dtype (the CLI's CPU default) sample in fp32; device= is honoured."""
    from echovideo.ops import upcast_ops
    from echovideo.transformer import EchoVideoTransformer

    p = tiny.PRESETS["shared"]
    dit = tiny.randomize_(EchoVideoTransformer(tiny.dit_config(p), operations=upcast_ops, dtype=torch.bfloat16))
    seen = []

    class Recorder(sampling.DiTCaller):
        def __call__(self, x, context, timestep, rope, step_index, num_steps, rows=sampling.ALL_ROWS):
            seen.append((x.dtype, context.dtype, x.device))
            return super().__call__(x, context, timestep, rope, step_index, num_steps, rows)

    image_latents = torch.randn(1, (p.frames - 1) // 4 + 1, p.latent_channels, p.height // 8, p.width // 8)
    pos, neg = torch.randn(1, p.text_len, p.text_dim), torch.randn(1, p.text_len, p.text_dim)
    run = dict(steps=2, guidance_scale=6.0, seed=0, device="cpu")
    sampling.sample(dit, pos, neg, image_latents, dit_caller=Recorder(dit), **run)
    assert seen[-1] == (torch.bfloat16, torch.bfloat16, torch.device("cpu"))  # no compute dtype: the weights'
    dit.compute_dtype = torch.float32
    seen.clear()
    sampling.sample(dit, pos, neg, image_latents, dit_caller=Recorder(dit), **run)
    assert seen and all(s == (torch.float32, torch.float32, torch.device("cpu")) for s in seen)


def test_step_cache_signal_runs_inside_the_block_hook():
    """With every block swapped out, the step cache's change signal (block 0's modulated input) must still run
    between the hook's before/after, or it would meet weights left on the offload device."""
    p = tiny.PRESETS["shared"]
    dit, run = _cache_run(p, steps=4)
    block0 = dit.transformer_blocks[0]
    inside, outside_calls, balance = [False], [], {}

    class Hook:
        def before(self, index, block):
            inside[0] = index == 0 or inside[0]
            balance[index] = balance.get(index, 0) + 1

        def after(self, index, block):
            if index == 0:
                inside[0] = False
            balance[index] -= 1

    real_norm1 = block0.norm1.forward

    def checked_norm1(*a, **k):
        if not inside[0]:
            outside_calls.append(1)
        return real_norm1(*a, **k)

    block0.norm1.forward = checked_norm1
    dit.block_hook = Hook()
    run(StepCache(dit, threshold=0.5))
    assert not outside_calls
    assert balance and set(balance.values()) == {0}  # every block brought in is sent back (swap stays bounded)


def test_rope_real_arithmetic_equals_complex():
    """Compiled blocks rotate q/k in real arithmetic (inductor has no complex kernels): same values. The rotation
    built once per DiT call gives the same bits as building it per call of rotate_pairs_."""
    from echovideo.rope import pair_rotation, rotary_embedding_for_video, rotate_pairs_, rotate_pairs_real_

    cos, sin = rotary_embedding_for_video(32, 2, 48, 80, 17)
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 0.0)):
        x = torch.randn(2, cos.shape[0], 3, 32).to(dtype)
        a, b = x.clone(), x.clone()
        rotate_pairs_(a, cos, sin)
        rotate_pairs_real_(b, cos, sin)
        assert not torch.equal(a, x)
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
        c = x.clone()
        rotate_pairs_(c, cos, sin, pair_rotation(cos, sin))
        assert torch.equal(c, a)


def test_generate_uses_the_reference_image_for_the_first_frame(monkeypatch):
    """pipeline.generate: the first latent frame and the SigLIP tokens come from reference_image when given
    (whole-image mode), else from the face crop; the ArcFace embedding is the one passed in either way. A photo the
    reference's padding would stretch is padded to the video's aspect (keep_proportions)."""
    import numpy as np

    from echovideo import pipeline
    from echovideo import vae as vae_lib

    p = tiny.PRESETS["shared"]
    dit, vae, sig = tiny.tiny_dit(p), tiny.tiny_vae(p), tiny.tiny_siglip(p)
    rng = np.random.RandomState(0)
    face, photo = (rng.randint(0, 256, (h, w, 3)).astype(np.uint8) for h, w in ((96, 96), (128, 96)))
    text = torch.randn(1, p.text_len, p.text_dim)
    ident = rng.randn(512).astype(np.float32)
    run = dict(width=p.width, height=p.height, num_frames=p.frames, steps=2, seed=1, decode=False)
    seen = []

    class FirstFrame(sampling.DiTCaller):
        def __call__(self, x, *a, **kw):
            seen.append(x[0, 0, p.latent_channels:].clone())  # the image-latent channels of latent frame 0
            return super().__call__(x, *a, **kw)

    siglip_inputs, fused = [], []
    tokens_pair, fuse = pipeline.face_tokens_pair, pipeline.fuse_conditioning
    monkeypatch.setattr(pipeline, "face_tokens_pair", lambda model, image: siglip_inputs.append(image)
                        or tokens_pair(model, image))
    monkeypatch.setattr(pipeline, "fuse_conditioning", lambda *a, **kw: fused.append(a[5]) or fuse(*a, **kw))
    for reference in (None, photo):
        pipeline.generate(dit, vae, sig, text, text, face, ident, reference_image=reference,
                          dit_caller=FirstFrame(dit), **run)
    for index, image in ((0, face), (2, photo)):
        expected = vae_lib.encode_face_frame(vae, image, p.width, p.height, p.frames, keep_proportions=True)[0, 0]
        torch.testing.assert_close(seen[index], expected)
    stretched = vae_lib.encode_face_frame(vae, photo, p.width, p.height, p.frames)[0, 0]
    assert not torch.allclose(seen[2], stretched)
    assert len(siglip_inputs) == 2 and siglip_inputs[0] is face and siglip_inputs[1] is photo
    assert len(fused) == 2 and all(e is ident for e in fused)


def test_sampled_latents_are_ordinary_tensors():
    """The loop runs in inference mode; what it returns can still be changed in place by the caller."""
    dit, run = _cache_run(tiny.PRESETS["shared"], steps=2)
    latents = run(None)
    assert not latents.is_inference()
    latents.mul_(2)


def test_block_swap_moves_only_the_swapped_blocks_around_their_call():
    """Each of the last N blocks is on the compute device ("meta" here, a device distinct from the CPU) while it
    runs, and afterwards points at its own CPU weights again (the same storage: nothing is copied back); the
    other blocks stay on the compute device."""
    model = tiny.tiny_dit(tiny.PRESETS["shared"])
    n = len(model.transformer_blocks)
    swap = enable_block_swap(model, blocks_on_offload=1, device="meta", offload_device="cpu")
    last = model.transformer_blocks[n - 1]
    home = [t.data_ptr() for t in list(last.parameters()) + list(last.buffers())]
    assert all(p.device.type == "cpu" for p in last.parameters())
    assert all(p.device.type == "meta" for b in model.transformer_blocks[:n - 1] for p in b.parameters())
    seen = []
    for i, block in enumerate(model.transformer_blocks):
        block.register_forward_pre_hook(
            lambda mod, args, _i=i: seen.append((_i, {p.device.type for p in mod.parameters()})))
    c = model.config
    x = torch.randn(1, 2, c.in_channels, 8, 8, device="meta")
    out = model(x, torch.randn(1, 16, c.text_embed_dim, device="meta"), torch.tensor([500.0], device="meta"))
    assert out.device.type == "meta"
    assert seen == [(i, {"meta"}) for i in range(n)] and swap.first_swapped == n - 1
    assert [t.data_ptr() for t in list(last.parameters()) + list(last.buffers())] == home
    assert all(p.device.type == "cpu" for p in last.parameters())


def test_block_swap_gives_the_weights_back_when_a_swapped_block_fails():
    """A block that raises (e.g. out of memory) still has its compute-device copies dropped: the swapped block
    points at its CPU weights again, so a failed run holds no extra VRAM."""
    model = tiny.tiny_dit(tiny.PRESETS["shared"])
    n = len(model.transformer_blocks)
    enable_block_swap(model, blocks_on_offload=1, device="meta", offload_device="cpu")
    last = model.transformer_blocks[n - 1]

    def fail(module, args):
        raise RuntimeError("out of memory (simulated)")

    handle = last.ff.register_forward_pre_hook(fail)
    c = model.config
    x = torch.randn(1, 2, c.in_channels, 8, 8, device="meta")
    with pytest.raises(RuntimeError, match="simulated"):
        model(x, torch.randn(1, 16, c.text_embed_dim, device="meta"), torch.tensor([500.0], device="meta"))
    handle.remove()
    assert {p.device.type for p in last.parameters()} == {"cpu"}


# --- mutation sweep (speed options): block swap bounds, step-cache arithmetic, compile bookkeeping, upcast ops,
# attention backends, tiny models ---


def test_block_swap_swaps_exactly_the_last_n_blocks_and_rejects_out_of_range():
    """On 4 blocks, N=1 swaps block 3 only and N=3 blocks 1..3 (first_swapped = n - N, not N); a negative N or
    one above the block count is refused; 0 and n are the bounds."""
    model = tiny.tiny_dit(tiny.PRESETS["large"])
    n = len(model.transformer_blocks)
    assert n == 4
    assert enable_block_swap(model, 1, "cpu").first_swapped == 3
    assert enable_block_swap(model, 3, "cpu").first_swapped == 1
    assert enable_block_swap(model, 0, "cpu").first_swapped == n
    assert enable_block_swap(model, n, "cpu").first_swapped == 0
    for bad in (-1, n + 1):
        with pytest.raises(ValueError, match=f"blocks_on_offload: got {bad}, needs 0..{n}"):
            enable_block_swap(model, bad, "cpu")
    disable_block_swap(model, "cpu")


def test_block_swap_moves_the_rest_of_the_model_and_disable_undoes_it():
    """enable_block_swap sends every non-block child to the compute device and installs the hook;
    disable_block_swap removes the hook (no block moves any more) and moves the whole model."""
    model = tiny.tiny_dit(tiny.PRESETS["shared"])
    moved = []
    for name, child in model.named_children():
        child.to = (lambda *a, _n=name, _to=child.to, **k: (moved.append((_n, str(a[0]))), _to(*a, **k))[1])
    swap = enable_block_swap(model, blocks_on_offload=1, device="cpu:0", offload_device="cpu")
    others = [n for n, _ in model.named_children() if n != "transformer_blocks"]
    assert others and sorted(moved) == sorted((n, "cpu:0") for n in others)
    assert model.block_hook is swap
    model_moves = []
    real_to = model.to
    model.to = lambda *a, **k: (model_moves.append(str(a[0])), real_to(*a, **k))[1]
    block_moves = []
    for i, block in enumerate(model.transformer_blocks):
        block.to = (lambda *a, _i=i, _to=block.to, **k: (block_moves.append(_i), _to(*a, **k))[1])
    disable_block_swap(model, "cpu:0")
    assert model.block_hook is None and model_moves == ["cpu:0"]
    c = model.config
    model(torch.randn(1, 2, c.in_channels, 8, 8), torch.randn(1, 16, c.text_embed_dim), torch.tensor([500.0]))
    assert block_moves == []


class _LinearDiT:
    """A stand-in DiT for StepCache's arithmetic: the input is a constant tensor c, the blocks add `slope * x`
    (so the residual is slope * c), and the head returns the video stream unchanged."""

    def __init__(self, slope):
        self.slope = slope
        self.block_hook = None

    def embed(self, hidden_states, context, timestep):
        return hidden_states, context, timestep

    def modulated_video_input(self, x, ctx, temb):
        return x

    def run_blocks(self, x, ctx, temb, rope):
        return x + self.slope * x, ctx + 1.0

    def head(self, x, ctx, temb, shape):
        return x


def _run_cache(cache, levels):
    outs = []
    for i, c in enumerate(levels):
        x = torch.full((1, 4), float(c))
        outs.append(cache(x, torch.zeros(1, 2), torch.zeros(1), None, i, len(levels)).clone())
    return outs


def test_step_cache_estimate_is_rate_times_change_since_last_full_evaluation():
    """Exact bookkeeping on a linear stand-in (residual = 2x, output = 3x): the rate is the residual change per
    unit input change relative to the output; the estimate is that rate times the input change accumulated since
    the last full evaluation (reset by each full evaluation); a skipped step returns input + the last residual."""
    levels = [1.0, 2.0, 2.1, 2.2, 2.3, 2.4]
    cache = StepCache(_LinearDiT(2.0), threshold=0.05)
    outs = _run_cache(cache, levels)
    rate1 = (2 * (2.0 - 1.0)) / ((2.0 - 1.0) * 3 * 2.0)  # = 1/3, from steps 0 and 1
    rate3 = (2 * (2.2 - 2.0)) / ((2.2 - 2.0) * 3 * 2.2)  # from steps 1 and 3
    steps = [s for s, _ in cache.estimates]
    assert steps == [2, 4] and cache.skipped == 2 and cache.calls == 4
    assert cache.estimates[0][1] == pytest.approx(rate1 * 0.1, rel=1e-4)
    assert cache.estimates[1][1] == pytest.approx(rate3 * 0.1, rel=1e-4)  # change counted from step 3 only
    torch.testing.assert_close(outs[2], torch.full((1, 4), 2.1 + 2 * 2.0))  # step 1's residual reused
    torch.testing.assert_close(outs[3], torch.full((1, 4), 3 * 2.2))  # step 3: estimate 0.2/3 >= 0.05, full
    assert StepCache(_LinearDiT(2.0), warmup_steps=0).warmup_steps == 2  # "at least 2"


def test_step_cache_threshold_zero_never_skips_even_a_zero_estimate():
    """A constant residual gives rate 0, so every estimate is 0: at threshold 0 still nothing is skipped
    (0 means every step computed); any positive threshold then skips all but warm-up and the last step."""
    class ConstantResidual(_LinearDiT):
        def run_blocks(self, x, ctx, temb, rope):
            return x + 1.0, ctx

    levels = [1.0, 2.0, 3.0, 4.0, 5.0]
    exact = StepCache(ConstantResidual(0.0), threshold=0.0)
    _run_cache(exact, levels)
    assert exact.skipped == 0 and exact.calls == 5
    loose = StepCache(ConstantResidual(0.0), threshold=1e-6)
    _run_cache(loose, levels)
    assert loose.estimates == [(2, 0.0), (3, 0.0)] and loose.calls == 3


def test_step_cache_respects_a_longer_warmup():
    levels = [1.0, 2.0, 2.01, 2.02, 2.03, 2.04]
    cache = StepCache(_LinearDiT(2.0), threshold=0.5, warmup_steps=4)
    _run_cache(cache, levels)
    assert [s for s, _ in cache.estimates] == [4]


def _recorded_compile(model):
    seen = []
    for block in model.transformer_blocks:
        real = block.compile
        block.compile = (lambda *a, _real=real, **k: (seen.append(k), _real(*a, **k))[1])
    return seen


def test_compile_settings_are_applied_kept_and_reset():
    """set_block_compile passes backend, mode and dynamic to every block; the same settings again keep the
    compiled blocks (no new compile); after uncompile the same settings compile again."""
    from types import SimpleNamespace

    from echovideo.compile import set_block_compile, uncompile_blocks

    model = tiny.tiny_dit(tiny.PRESETS["shared"])
    seen = _recorded_compile(model)
    settings = SimpleNamespace(backend="aot_eager", mode="max-autotune-no-cudagraphs", dynamic=True)
    set_block_compile(model, settings)  # compiles lazily: nothing runs here
    want = dict(backend="aot_eager", mode="max-autotune-no-cudagraphs", dynamic=True)
    assert seen == [want] * len(model.transformer_blocks)
    assert model.compiled_with == "aot_eager" and model.compile_settings == ("aot_eager", settings.mode, True)
    impls = [b._compiled_call_impl for b in model.transformer_blocks]
    assert all(i is not None for i in impls)
    set_block_compile(model, settings)
    assert len(seen) == len(model.transformer_blocks)  # kept
    assert [b._compiled_call_impl for b in model.transformer_blocks] == impls
    set_block_compile(model, None)
    assert model.compiled_with is None and model.compile_settings is None
    assert all(b._compiled_call_impl is None for b in model.transformer_blocks)
    set_block_compile(model, settings)  # compiled again after the eager round
    assert len(seen) == 2 * len(model.transformer_blocks)
    assert all(b._compiled_call_impl is not None for b in model.transformer_blocks)
    uncompile_blocks(model)
    assert model.compile_settings is None and all(b._compiled_call_impl is None for b in model.transformer_blocks)


def test_upcast_layers_cast_weights_to_the_inputs_dtype_and_device():
    """Upcast layers store any dtype (fp8 too: no init at construction) and compute in the input's dtype, with
    weight and bias moved to the input's device (here meta, so the move shows); LayerNorm keeps its eps."""
    from torch import nn

    from echovideo import ops

    w = torch.randn(3, 4, dtype=torch.bfloat16)
    cast = ops._cast(w, torch.empty(2, device="meta", dtype=torch.float32))
    assert cast.device.type == "meta" and cast.dtype == torch.float32
    assert ops._cast(None, w) is None
    for dtype in ops.FP8_DTYPES:
        layer = ops.upcast_ops.Linear(4, 3, bias=True, dtype=dtype)
        assert layer.weight.dtype == dtype
        ops.upcast_ops.Conv2d(2, 3, 2, dtype=dtype)
    assert len(ops.FP8_DTYPES) == 2 and all(ops.is_fp8(d) for d in ops.FP8_DTYPES)
    assert not ops.is_fp8(torch.bfloat16)
    torch.manual_seed(0)
    ln = ops.upcast_ops.LayerNorm(8, eps=10.0, dtype=torch.bfloat16)
    with torch.no_grad():
        ln.weight.copy_(torch.linspace(0.5, 1.5, 8))
        ln.bias.copy_(torch.linspace(-0.1, 0.1, 8))
    ref = nn.LayerNorm(8, eps=10.0)
    ref.load_state_dict({k: v.float() for k, v in ln.state_dict().items()})
    x = torch.randn(5, 8)
    torch.testing.assert_close(ln(x), ref(x))
    conv = ops.upcast_ops.Conv2d(2, 3, 2, dtype=torch.bfloat16)
    lin = ops.upcast_ops.Linear(4, 3, dtype=torch.bfloat16)
    with torch.no_grad():
        for m in (conv, lin):
            m.weight.normal_()
            m.bias.normal_()
    xc = torch.randn(1, 2, 4, 4)
    torch.testing.assert_close(conv(xc), torch.nn.functional.conv2d(xc, conv.weight.float(), conv.bias.float()))
    xl = torch.randn(2, 4)
    torch.testing.assert_close(lin(xl), torch.nn.functional.linear(xl, lin.weight.float(), lin.bias.float()))
    assert ops.operations_for(None, torch.float32) is nn and ops.operations_for(torch.float32, torch.float32) is nn
    assert ops.operations_for(torch.bfloat16, torch.float32) is ops.upcast_ops


def test_sage_backend_runs_in_half_precision_and_returns_the_inputs_dtype(monkeypatch):
    """With sageattention installed (a stand-in here): fp32 q/k/v go in as fp16 in HND layout and come back as
    fp32; bf16 goes in unchanged. It is listed once, after sdpa."""
    import sys
    import types

    seen = []

    def sageattn(q, k, v, tensor_layout):
        seen.append((q.dtype, k.dtype, v.dtype, tensor_layout))
        return attention.sdpa_attention(q, k, v)

    monkeypatch.setitem(sys.modules, "sageattention", types.SimpleNamespace(sageattn=sageattn))
    fn = attention.get_attention("sage")
    q = torch.randn(1, 2, 5, 8)
    out = fn(q, q, q)
    assert seen == [(torch.float16,) * 3 + ("HND",)] and out.dtype == torch.float32
    torch.testing.assert_close(out, attention.sdpa_attention(q, q, q), rtol=2e-3, atol=2e-3)
    seen.clear()
    qb = q.bfloat16()
    assert fn(qb, qb, qb).dtype == torch.bfloat16 and seen == [(torch.bfloat16,) * 3 + ("HND",)]
    names = attention.available_attention()
    assert names[:2] == ["sdpa", "sage"] and len(names) == len(set(names))


def test_attention_lookup_defaults_and_callables(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sageattention", None)
    names = attention.available_attention()
    assert names[0] == "sdpa" and "sage" not in names and len(names) == len(set(names))
    assert attention.get_attention(None) is attention.sdpa_attention
    assert attention.get_attention("") is attention.sdpa_attention
    assert attention.get_attention(math_attention) is math_attention
    monkeypatch.setitem(attention._BACKENDS, "test_swap", attention.sdpa_attention)
    attention.register_attention("test_swap", math_attention)  # registering again replaces
    assert attention.get_attention("test_swap") is math_attention


def test_tiny_models_follow_their_seed_dtype_and_std():
    """Same seed, same weights; another seed, other weights; frozen eval models in the asked dtype; norm
    weights near 1; matrices at the asked std."""
    p = tiny.PRESETS["shared"]
    a, b, c = tiny.tiny_dit(p, seed=0), tiny.tiny_dit(p, seed=0), tiny.tiny_dit(p, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["proj_out.weight"], sc["proj_out.weight"])
    assert not any(t.requires_grad for t in a.parameters()) and not a.training
    assert all(t.dtype == torch.bfloat16 for t in tiny.tiny_dit(p, dtype=torch.bfloat16).parameters())
    norms = [(n, t) for n, t in a.named_parameters() if t.dim() == 1 and "norm" in n and n.endswith("weight")]
    assert norms and all((t - 1).abs().max() < 0.5 for _, t in norms)
    big = tiny.randomize_(torch.nn.Linear(64, 64), std=0.5)
    assert 0.4 < big.weight.std().item() < 0.6


@pytest.fixture
def matmul_attention_everywhere(monkeypatch):
    """ops.matmul_attention for any key count and thread count (its real thresholds are about speed only)."""
    from echovideo import ops

    monkeypatch.setattr(ops, "MATMUL_ATTENTION_MIN_KEYS", 1)
    monkeypatch.setattr(ops, "MATMUL_ATTENTION_MAX_THREADS", 1 << 20)
    return ops


@needs_onednn_linear
def test_matmul_attention_equals_sdpa(matmul_attention_everywhere, monkeypatch):
    """Strided and contiguous inputs, more keys than queries, a wider value head, several blocks of query rows and
    saturating scores: torch's SDPA to float32 rounding, in the [batch, tokens, heads, dim] layout underneath."""
    import torch.nn.functional as F

    ops = matmul_attention_everywhere
    calls = []
    real = ops._linear_pointwise
    monkeypatch.setattr(ops, "_linear_pointwise", lambda *a: calls.append(a[3:]) or real(*a))
    torch.manual_seed(0)
    q = torch.randn(2, 30, 3, 16).transpose(1, 2)  # the DiT's layout: [B, S, H, D] viewed as [B, H, S, D]
    k, v = torch.randn(2, 3, 50, 16), torch.randn(2, 50, 3, 24).transpose(1, 2)
    cases = [(q, k, v), (q.contiguous(), k, v.contiguous()), (q * 30, k * 30, v)]
    with torch.inference_mode():
        for block_bytes in (ops.SCORE_BLOCK_BYTES, 4 * 50 * 7):  # one block of rows; blocks of 7 rows (the last 2)
            monkeypatch.setattr(ops, "SCORE_BLOCK_BYTES", block_bytes)
            for qi, ki, vi in cases:
                calls.clear()
                out = ops.matmul_attention(qi, ki, vi)
                assert len(calls) == 2 * 2 * 3 * (1 if block_bytes > 4 * 50 * 30 else 5)
                assert out.shape == (2, 3, 30, 24) and out.transpose(1, 2).is_contiguous()
                torch.testing.assert_close(out, F.scaled_dot_product_attention(qi, ki, vi), rtol=1e-5, atol=1e-5)
        calls.clear()
        monkeypatch.setattr(ops, "SCORE_BLOCK_BYTES", 1 << 20)
        # the default backend takes it
        torch.testing.assert_close(attention.sdpa_attention(q, k, v), F.scaled_dot_product_attention(q, k, v),
                                   rtol=1e-5, atol=1e-5)
        assert len(calls) == 12


@needs_onednn_linear
def test_matmul_attention_declines_where_it_does_not_apply(monkeypatch):
    import torch.nn.functional as F

    from echovideo import ops

    calls = []
    real = ops._linear_pointwise
    monkeypatch.setattr(ops, "_linear_pointwise", lambda *a: calls.append(a[3:]) or real(*a))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    q, k, v = (torch.randn(1, 2, ops.MATMUL_ATTENTION_MIN_KEYS, 8) for _ in range(3))
    with torch.inference_mode():
        assert ops.matmul_attention(q, k, v) is not None and len(calls) == 4  # at the thresholds: taken
        calls.clear()
        short = k[:, :, 1:], v[:, :, 1:]
        declined = [ops.matmul_attention(q, *short),  # fewer keys than pay off
                    ops.matmul_attention(q.double(), k.double(), v.double()),
                    ops.matmul_attention(q[0], k[0], v[0]),  # not [B, H, S, D]
                    ops.matmul_attention(q, k[:, :1], v)]  # heads that do not match: SDPA names it
        with torch.backends.mkldnn.flags(enabled=False):
            declined.append(ops.matmul_attention(q, k, v))
            torch.testing.assert_close(attention.sdpa_attention(q, k, v), F.scaled_dot_product_attention(q, k, v),
                                       rtol=0, atol=0)
        monkeypatch.setattr(torch, "get_num_threads", lambda: ops.MATMUL_ATTENTION_MAX_THREADS + 1)
        declined.append(ops.matmul_attention(q, k, v))  # more threads than measured: SDPA
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    declined.append(ops.matmul_attention(q.requires_grad_(), k, v))  # autograd
    assert declined == [None] * 7 and calls == []


@needs_onednn_linear
def test_matmul_attention_falls_back_to_sdpa_when_onednn_refuses(matmul_attention_everywhere, monkeypatch):
    import torch.nn.functional as F

    ops = matmul_attention_everywhere

    def refuse(*args):
        raise RuntimeError("could not create a primitive descriptor")

    monkeypatch.setattr(ops, "_linear_pointwise", refuse)
    q, k, v = (torch.randn(1, 2, 12, 8) for _ in range(3))
    with torch.inference_mode():
        torch.testing.assert_close(attention.sdpa_attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    assert ops._linear_pointwise is None

    def out_of_ram(*args):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 123 bytes")

    monkeypatch.setattr(ops, "_linear_pointwise", out_of_ram)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="DefaultCPUAllocator"):
        attention.sdpa_attention(q, k, v)
    assert ops._linear_pointwise is out_of_ram


@pytest.mark.golden
@needs_onednn_linear
def test_matmul_attention_matches_golden(golden, matmul_attention_everywhere, monkeypatch):
    ops = matmul_attention_everywhere
    calls = []
    real = ops._linear_pointwise
    monkeypatch.setattr(ops, "_linear_pointwise", lambda *a: calls.append(a[3:]) or real(*a))
    monkeypatch.setattr(ops, "SCORE_BLOCK_BYTES", 4096)  # several blocks of query rows per head
    model = build_dit(golden)
    with torch.inference_mode():
        out = level1_output(model, golden)
    assert len(calls) > 2 * model.config.num_layers * model.config.num_attention_heads
    assert_close_scaled(out, golden["transformer.out.model_output"], name="matmul attention")
