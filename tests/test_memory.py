"""The memory estimates the nodes ask ComfyUI for (VAE encode and decode, one DiT block) agree with the peaks
MetaPeak measures on the released models (meta device: no memory or compute), and MetaPeak itself counts what
is alive at once."""
import pytest
import torch

from echovideo.memory import MetaPeak, measure_vae_decode_peak, vae_decode_bytes, vae_encode_bytes
from echovideo.vae import RELEASED_VAE_CONFIG, build_vae, configure_tiling, decode_region, encode_region
from echovideo.video import frames_decoded_from


def test_meta_peak_counts_live_tensors_not_views_or_in_place_results():
    meter = MetaPeak()
    with meter:
        a = torch.empty(1000, device="meta")  # 4000 bytes
        b = a * 2  # 8000 alive
        a.view(10, 100).add_(1)  # a view and an in-place op: nothing new
        del a  # 4000
        c = b + 1  # 8000 again
        d = torch.cat([b, c])  # 16000 at the peak
        del b, c, d
    assert meter.peak == 16000 and meter.live == 0


@pytest.fixture(scope="module")
def released_vae():
    return build_vae(RELEASED_VAE_CONFIG, device="meta")


@pytest.mark.parametrize("height,width,latent_frames,tiling,tile_size", [
    (64, 96, 3, False, None), (64, 96, 7, False, None), (64, 96, 4, False, None), (128, 192, 7, True, 64)])
def test_vae_decode_estimate_covers_the_measured_peak(released_vae, height, width, latent_frames, tiling, tile_size):
    peak = measure_vae_decode_peak(released_vae, height, width, latent_frames, tiling, tile_size)
    region = decode_region(released_vae, height, width, tiling, tile_size)
    frames = frames_decoded_from(latent_frames)
    estimate = vae_decode_bytes(*region, 4, frames, height, width)
    print(f"decode {height}x{width}x{latent_frames} tiling={tiling}: peak {peak / 2 ** 20:.0f} MiB, "
          f"estimate {estimate / 2 ** 20:.0f} MiB")
    assert peak <= estimate <= 1.6 * peak


@pytest.mark.parametrize("height,width", [(64, 96), (240, 360), (480, 848), (768, 1360)])
def test_vae_encode_estimate_covers_the_measured_peak(released_vae, height, width):
    """As encode_face_frame runs it (the VAE's default tiles): the whole frame up to 240 x 360, tiles above."""
    x = torch.empty(1, 3, 1, height, width, device="meta")
    configure_tiling(released_vae, True)
    meter = MetaPeak()
    with torch.no_grad(), meter:
        released_vae.encode(x).latent_dist.mode()
    estimate = vae_encode_bytes(*encode_region(released_vae, height, width), 4, height, width)
    print(f"encode {height}x{width}: peak {meter.peak / 2 ** 20:.0f} MiB, estimate {estimate / 2 ** 20:.0f} MiB")
    assert meter.peak <= estimate <= 1.3 * meter.peak


@pytest.mark.parametrize("batch", [1, 2])
def test_dit_block_estimate_is_the_measured_block_peak(batch):
    """One released-size block on the meta device (attention stubbed by its output: flash attention's own
    memory is attention_bytes, counted apart): the joint stream plus what the block makes at once is
    block_activation_bytes, the figure the Sampler asks ComfyUI for and the README's memory table shows."""
    import dataclasses

    from echovideo.config import RELEASED_CONFIG
    from echovideo.memory import block_activation_bytes, dit_tokens
    from echovideo.transformer import EchoVideoTransformer

    config = dataclasses.replace(RELEASED_CONFIG, num_layers=1)
    with torch.device("meta"):
        model = EchoVideoTransformer(config, dtype=torch.bfloat16)
    frames, h, w, text = 3, 8, 12, config.max_text_seq_length
    hidden = torch.empty(batch, frames, config.in_channels, h, w, device="meta", dtype=torch.bfloat16)
    context = torch.empty(batch, text, config.text_embed_dim, device="meta", dtype=torch.bfloat16)
    rope = torch.empty(frames * (h // 2) * (w // 2), config.attention_head_dim, device="meta")
    with torch.no_grad():
        x, ctx, temb = model.embed(hidden, context, torch.empty(batch, device="meta"))
        tokens = torch.cat([ctx, x], dim=1)
        meter = MetaPeak()
        with meter:
            model.transformer_blocks[0](tokens, text, temb, (rope, rope),
                                        lambda q, k, v: torch.empty(q.shape, dtype=q.dtype, device=q.device))
    stream = tokens.numel() * tokens.element_size()
    assert tokens.shape[1] == dit_tokens(config, frames, h, w)
    measured, estimate = stream + meter.peak, block_activation_bytes(config, tokens.shape[1], batch)
    # seven streams (GELU in place off the CPU); the timestep's modulation vectors add 0.2% at this tiny size
    assert 0.99 * measured <= estimate <= 1.1 * measured


@pytest.mark.parametrize("batch", [1, 2])
def test_dit_forward_peak_stays_within_the_block_estimate(batch):
    """A whole forward (embedding, all blocks, head) of released-size blocks on the meta device peaks within
    block_activation_bytes: the embedding's outputs are not held while the blocks run, nor q/k/v during the
    attention's output projection (each was one more stream over the estimate)."""
    import dataclasses

    from echovideo.config import RELEASED_CONFIG
    from echovideo.memory import block_activation_bytes, dit_tokens
    from echovideo.transformer import EchoVideoTransformer

    config = dataclasses.replace(RELEASED_CONFIG, num_layers=2)
    with torch.device("meta"):
        model = EchoVideoTransformer(config, dtype=torch.bfloat16)
    model.set_attention(lambda q, k, v: torch.empty(q.shape, dtype=q.dtype, device=q.device))
    frames, h, w, text = 3, 8, 12, config.max_text_seq_length
    hidden = torch.empty(batch, frames, config.in_channels, h, w, device="meta", dtype=torch.bfloat16)
    context = torch.empty(batch, text, config.text_embed_dim, device="meta", dtype=torch.bfloat16)
    rope = torch.empty(frames * (h // 2) * (w // 2), config.attention_head_dim, device="meta")
    meter = MetaPeak()
    with torch.no_grad(), meter:
        model(hidden, context, torch.empty(batch, device="meta"), (rope, rope))
    estimate = block_activation_bytes(config, dit_tokens(config, frames, h, w), batch)
    # the timestep's modulation vectors add 0.2% at this tiny size, nothing at a real one
    assert 0.9 * estimate <= meter.peak <= 1.01 * estimate, (meter.peak, estimate)


def test_gelu_runs_in_place_except_float32_on_cpu():
    """In place (same values as torch's out-of-place kernel) for bf16/fp16 and off the CPU; float32 on the CPU
    keeps its sigmoid form and a scratch tensor, which the float32 CPU estimate counts (three streams more)."""
    from echovideo.config import RELEASED_CONFIG
    from echovideo.memory import block_activation_bytes
    from echovideo.transformer import gelu_runs_in_place, gelu_tanh

    for dtype in (torch.bfloat16, torch.float16):
        x = torch.randn(3, 7, 64).to(dtype)
        expected = torch.nn.functional.gelu(x, approximate="tanh")
        with torch.inference_mode():
            out = gelu_tanh(x)
        assert out.data_ptr() == x.data_ptr() and torch.equal(out, expected), dtype
    assert gelu_runs_in_place("cuda", torch.float32) and gelu_runs_in_place("meta", torch.float32)
    assert not gelu_runs_in_place("cpu", torch.float32)
    x = torch.randn(3, 7, 64)
    out = gelu_tanh(x)
    assert out.data_ptr() != x.data_ptr()
    torch.testing.assert_close(out, torch.nn.functional.gelu(x, approximate="tanh"), rtol=1e-5, atol=1e-6)
    grad_x = torch.randn(4, requires_grad=True)  # autograd: out of place, so backward still works
    gelu_tanh(grad_x.to(torch.bfloat16)).float().sum().backward()
    assert grad_x.grad is not None
    unit = 2 * 100 * RELEASED_CONFIG.inner_dim * 2
    assert block_activation_bytes(RELEASED_CONFIG, 100, 2) == 7 * unit
    assert block_activation_bytes(RELEASED_CONFIG, 100, 2, gelu_in_place=False) == 10 * unit


def test_weights_cast_for_compute_are_asked_for():
    """fp8 (or bf16 computed in fp32) weights are cast a layer at a time: the Sampler's request adds the largest
    cast copy, one feed-forward weight; weights stored at the compute width add nothing."""
    from echovideo.config import RELEASED_CONFIG
    from echovideo.memory import sampling_memory_bytes

    plain = sampling_memory_bytes(RELEASED_CONFIG, 13, 60, 106, batch=2, dtype=torch.bfloat16)
    ff_weight = 4 * RELEASED_CONFIG.inner_dim ** 2 * 2  # 3072 x 12288 in bf16: 72 MiB
    assert ff_weight == 72 * 2 ** 20
    for stored, extra in ((torch.float8_e4m3fn, ff_weight), (torch.float8_e5m2, ff_weight), (torch.bfloat16, 0),
                          (torch.float32, 0)):
        got = sampling_memory_bytes(RELEASED_CONFIG, 13, 60, 106, batch=2, dtype=torch.bfloat16, weight_dtype=stored)
        assert got == plain + extra, stored
    fp32 = sampling_memory_bytes(RELEASED_CONFIG, 13, 60, 106, batch=1, dtype=torch.float32)
    assert sampling_memory_bytes(RELEASED_CONFIG, 13, 60, 106, batch=1, dtype=torch.float32,
                                 weight_dtype=torch.bfloat16) == fp32 + 2 * ff_weight
