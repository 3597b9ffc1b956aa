"""Pins of the library's behaviour that the golden and validation tests do not reach: found by hand mutation
testing (each test fails under a single-point change of the code it names). CPU only, tiny models, seconds."""
import re

import numpy as np
import pytest
import torch

from echovideo import guidance, pipeline, sampling, siglip, tiny
from echovideo.config import RELEASED_CONFIG, TransformerConfig
from echovideo.errors import CheckpointError, EchoVideoInputError
from echovideo.rope import rotary_embedding_for_video
from echovideo.transformer import EchoVideoTransformer, timestep_embedding
from echovideo.video import check_video_size, decoded_frame_count, latent_frames, video_size_problems

TINY = dict(num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=32,
            text_embed_dim=64, num_layers=1, max_text_seq_length=16, face_seq_length=16)
P = tiny.PRESETS["shared"]


@pytest.fixture(scope="module")
def dit():
    return tiny.tiny_dit(P)


# ---------------------------------------------------------------- config.py

@pytest.mark.parametrize("override, named", [
    ({"use_rotary_positional_embeddings": False}, "use_rotary_positional_embeddings=False"),
    ({"use_learned_positional_embeddings": True}, "use_learned_positional_embeddings=True"),
    ({"ofs_embed_dim": 512}, "ofs_embed_dim=512"),
    ({"activation_fn": "gelu"}, "activation functions other than gelu-approximate/silu"),
    ({"timestep_activation_fn": "relu"}, "activation functions other than gelu-approximate/silu"),
])
def test_config_refuses_each_unsupported_option(override, named):
    TransformerConfig.from_dict(TINY)  # the base config is an EchoVideo one
    with pytest.raises(CheckpointError, match=re.escape(named)):
        TransformerConfig.from_dict({**TINY, **override})


def test_transformer_validates_a_config_object():
    """A TransformerConfig built directly is not validated (a plain dataclass); the model validates it."""
    bad = TransformerConfig(**{**TINY, "in_channels": 4})
    with pytest.raises(CheckpointError, match="in_channels = 2 x out_channels"):
        EchoVideoTransformer(bad)


def test_latent_channels_are_the_output_channels():
    assert TransformerConfig(**TINY).latent_channels == 4
    assert RELEASED_CONFIG.latent_channels == 16 and RELEASED_CONFIG.inner_dim == 48 * 64


# ---------------------------------------------------------------- guidance.py

def test_dynamic_guidance_schedule_values():
    """1 + g (1 - cos(pi ((T - t) / T)^5)) / 2: 1 + g at t = 0, 1 at t = T; between, the fifth power."""
    assert guidance.dynamic_guidance_scale(6.0, 0, 50) == pytest.approx(7.0, abs=1e-12)
    assert guidance.dynamic_guidance_scale(6.0, 50, 50) == pytest.approx(1.0, abs=1e-12)
    # t = T/2: ((T - t)/T)^5 = 1/32 -> 1 + 3 (1 - cos(pi/32)), by hand 1.0144458...
    assert guidance.dynamic_guidance_scale(6.0, 25, 50) == pytest.approx(1.0144458, abs=1e-6)
    assert guidance.guidance_scale_at(6.0, 0, 50, dynamic=True) == pytest.approx(7.0)
    assert guidance.guidance_scale_at(6.0, 0, 50, dynamic=False) == 6.0


def test_combine_guidance_direction():
    uncond, cond = torch.zeros(3), torch.ones(3)
    assert torch.equal(guidance.combine_guidance(uncond, cond, 3.0), torch.full((3,), 3.0))
    assert torch.equal(guidance.combine_guidance(uncond, cond, 1.0), cond)


# ---------------------------------------------------------------- video.py

@pytest.mark.parametrize("w, h, f, arg", [
    (64, 64, -3, "num_frames"), (64, 64, 9.0, "num_frames"),
    (64, 0, 9, "height"), (64, 64.0, 9, "height"), (0, 64, 9, "width"), (72, 64, 9, "width"),
    (64.0, 64, 9, "width")])
def test_video_size_refuses(w, h, f, arg):
    with pytest.raises(EchoVideoInputError, match=f"^{arg}: got "):
        check_video_size(w, h, f)
    assert [m.split(":")[0] for m in video_size_problems(w, h, f)] == [arg]


def test_video_size_problems_lists_every_broken_rule():
    assert video_size_problems(64, 64, 9) == []
    assert [m.split(":")[0] for m in video_size_problems(70, 72, 0)] == ["num_frames", "height", "width"]
    assert video_size_problems(70, 64, 9) == ["width: got 70, needs a positive multiple of 16 (e.g. 848)"]


@pytest.mark.parametrize("frames, decoded, latents", [(1, 1, 1), (5, 8, 2), (9, 9, 3), (10, 9, 3), (11, 9, 3),
                                                      (12, 9, 3), (13, 16, 4), (14, 16, 4), (17, 17, 5), (49, 49, 13)])
def test_decoded_and_latent_frame_counts(frames, decoded, latents):
    """The library takes any count, as the published pipeline does (which floors 10-12 to 3 latent frames); the
    nodes and the CLI (exact_frames) take only counts that come out as asked."""
    assert decoded_frame_count(frames) == decoded and latent_frames(frames) == latents
    check_video_size(64, 64, frames)
    if decoded == frames:
        check_video_size(64, 64, frames, exact_frames=True)
    else:
        with pytest.raises(EchoVideoInputError, match=f"num_frames: got {frames}, needs 8k\\+1 frames"):
            check_video_size(64, 64, frames, exact_frames=True)


# ---------------------------------------------------------------- pipeline.py

@pytest.mark.parametrize("bad", [np.zeros(128, np.float32), torch.zeros(2, 512), torch.zeros(2, 256),
                                 torch.zeros(1, 1, 512)])
def test_reference_id_embedding_refuses_other_shapes(bad):
    with pytest.raises(EchoVideoInputError, match="^id_embedding: got "):
        pipeline.reference_id_embedding(bad)


def test_fuse_conditioning_runs_in_the_models_dtype():
    """float32 text, face tokens and ArcFace embedding into a bf16 DiT: all cast to bf16 before IITF."""
    model = tiny.tiny_dit(P, dtype=torch.bfloat16)
    text, face = torch.randn(1, P.text_len, P.text_dim), torch.randn(1, 16, 768)
    cond = pipeline.fuse_conditioning(model, text, text, face, face, np.ones(512, np.float32))
    assert cond.positive.dtype == torch.bfloat16 and cond.positive.shape == (1, P.text_len, P.text_dim)
    assert cond.negative.shape == cond.positive.shape


class _Stop(Exception):
    pass


def _generate_inputs():
    rng = np.random.RandomState(0)
    return dict(text_positive=torch.randn(1, P.text_len, P.text_dim), text_negative=torch.randn(1, P.text_len, P.text_dim),
                face_crop=rng.randint(0, 256, (96, 96, 3)).astype(np.uint8),
                id_embedding=rng.randn(512).astype(np.float32))


def test_generate_forwards_its_options(dit, monkeypatch):
    """generate passes steps, guidance, dynamic CFG, seed, callback and DiT caller to sample(), decodes with the
    tiling asked for, and returns the latents undecoded when decode=False. Fusion runs once per branch only."""
    vae, sig = tiny.tiny_vae(P), tiny.tiny_siglip(P)
    seen, fused = {}, []
    latents = torch.zeros(1, 3, P.latent_channels, 8, 8)

    def fake_sample(model, pos, neg, image_latents, **kw):
        seen.update(kw, negative=neg)
        return latents

    def fake_decode(vae_, lat, tiling):
        seen["decoded"] = (lat, tiling)
        return "frames"

    monkeypatch.setattr(pipeline, "sample", fake_sample)
    monkeypatch.setattr(pipeline.vae_lib, "decode_to_images", fake_decode)
    monkeypatch.setattr(dit, "fuse_identity", lambda *a: fused.append(a) or torch.zeros(1, P.text_len, P.text_dim),
                        raising=False)
    callback, caller = (lambda *a: None), sampling.DiTCaller(dit)
    common = dict(width=P.width, height=P.height, num_frames=P.frames, **_generate_inputs())
    out = pipeline.generate(dit, vae, sig, steps=3, guidance_scale=2.5, dynamic_cfg=False, seed=77, callback=callback,
                            dit_caller=caller, tiling=False, **common)
    assert out == "frames" and seen["decoded"][0] is latents and seen["decoded"][1] is False
    assert (seen["steps"], seen["guidance_scale"], seen["dynamic_cfg"], seen["seed"]) == (3, 2.5, False, 77)
    assert seen["callback"] is callback and seen["dit_caller"] is caller and len(fused) == 2
    seen.clear(), fused.clear()
    out = pipeline.generate(dit, vae, sig, steps=2, guidance_scale=1.0, decode=False, **common)
    assert out is latents and "decoded" not in seen
    assert seen["negative"] is None and len(fused) == 1  # guidance off: no unconditional branch to fuse
    seen.clear()
    pipeline.generate(dit, vae, sig, steps=2, tiling=True, **common)
    assert seen["decoded"][1] is True and seen["dynamic_cfg"] is True


def test_generate_checks_the_size_first(dit, monkeypatch):
    def never(*a, **k):
        raise _Stop

    monkeypatch.setattr(pipeline, "face_tokens_pair", never)
    with pytest.raises(EchoVideoInputError, match="^num_frames: got 0"):
        pipeline.generate(dit, None, None, width=P.width, height=P.height, num_frames=0, **_generate_inputs())
    with pytest.raises(EchoVideoInputError, match="^height: got 72"):
        pipeline.generate(dit, None, None, width=P.width, height=72, num_frames=9, **_generate_inputs())


# ---------------------------------------------------------------- sampling.py

def _ctx():
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, P.text_len, P.text_dim, generator=g), torch.randn(1, P.text_len, P.text_dim, generator=g)


def test_sampler_refuses_bad_shapes(dit):
    pos, neg = _ctx()
    good = torch.zeros(1, 2, P.latent_channels, 8, 8)
    with pytest.raises(EchoVideoInputError, match="^image_latents: got \\(1, 2, 4, 7, 8\\)"):
        sampling.sample(dit, pos, neg, torch.zeros(1, 2, P.latent_channels, 7, 8), steps=1)
    with pytest.raises(EchoVideoInputError, match="^image_latents: got \\(1, 2, 4, 8, 5\\)"):
        sampling.sample(dit, pos, neg, torch.zeros(1, 2, P.latent_channels, 8, 5), steps=1)
    with pytest.raises(EchoVideoInputError, match="^positive_context: got \\(16, 64\\)"):
        sampling.sample(dit, pos[0], neg, good, steps=1)
    with pytest.raises(EchoVideoInputError, match="^negative_context: got \\(1, 8, 64\\)"):
        sampling.sample(dit, pos, neg[:, :8], good, steps=1)


class _Recorder(sampling.DiTCaller):
    def __init__(self, model):
        super().__init__(model)
        self.ropes = []

    def __call__(self, x, context, timestep, rope, step_index, num_steps, rows=sampling.ALL_ROWS):
        self.ropes.append(rope)
        return super().__call__(x, context, timestep, rope, step_index, num_steps, rows)


def test_sampler_rope_follows_a_non_square_latent(dit):
    """height != width: the RoPE is the one for (h x 8) x (w x 8) pixels, not transposed."""
    pos, neg = _ctx()
    caller = _Recorder(dit)
    sampling.sample(dit, pos, neg, torch.zeros(1, 2, P.latent_channels, 4, 12), steps=1, dit_caller=caller)
    cos, sin = rotary_embedding_for_video(P.head_dim, 2, 32, 96, 5)
    got_cos, got_sin = caller.ropes[0]
    assert torch.equal(got_cos, cos) and torch.equal(got_sin, sin)
    assert not torch.equal(cos, rotary_embedding_for_video(P.head_dim, 2, 96, 32, 5)[0])


def test_sampler_uses_the_generator_it_is_given(dit):
    pos, neg = _ctx()
    lat = torch.randn(1, 2, P.latent_channels, 8, 8, generator=torch.Generator().manual_seed(1))
    run = dict(steps=2, guidance_scale=3.0)
    a = sampling.sample(dit, pos, neg, lat, seed=5, **run)
    b = sampling.sample(dit, pos, neg, lat, seed=0, generator=torch.Generator("cpu").manual_seed(5), **run)
    c = sampling.sample(dit, pos, neg, lat, seed=0, **run)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sampler_callback_gets_each_steps_denoised_estimate(dit):
    """callback(step, total, denoised): with a zero v-prediction the first step's estimate of the clean latents is
    sqrt(alpha_bar_t) times the initial noise (x0 = sqrt(a) x_t - sqrt(1 - a) v)."""

    class ZeroV(sampling.DiTCaller):
        def __call__(self, x, context, timestep, rope, step_index, num_steps, rows=sampling.ALL_ROWS):
            return torch.zeros(x.shape[0], x.shape[1], P.latent_channels, *x.shape[3:])

    pos, neg = _ctx()
    lat = torch.randn(1, 2, P.latent_channels, 8, 8)
    seen = []
    final = sampling.sample(dit, pos, neg, lat, steps=3, seed=9, dit_caller=ZeroV(dit),
                            callback=lambda i, n, d: seen.append((i, n, d.clone())))
    assert [(i, n) for i, n, _ in seen] == [(1, 3), (2, 3), (3, 3)]
    scheduler = sampling.make_scheduler()
    scheduler.set_timesteps(3)
    noise = sampling.initial_noise(lat.shape, torch.Generator("cpu").manual_seed(9)) * scheduler.init_noise_sigma
    alpha_bar = scheduler.alphas_cumprod[int(scheduler.timesteps[0])]
    torch.testing.assert_close(seen[0][2], noise * alpha_bar.sqrt(), rtol=1e-5, atol=1e-6)
    assert not torch.equal(seen[0][2], final)


def test_sampler_static_guidance_uses_the_scale_as_given(dit, monkeypatch):
    scales = []
    real = sampling.combine_guidance
    monkeypatch.setattr(sampling, "combine_guidance", lambda u, c, s: scales.append(s) or real(u, c, s))
    pos, neg = _ctx()
    lat = torch.zeros(1, 2, P.latent_channels, 8, 8)
    sampling.sample(dit, pos, neg, lat, steps=3, guidance_scale=4.0, dynamic_cfg=False)
    assert scales == [4.0, 4.0, 4.0]
    scales.clear()
    sampling.sample(dit, pos, neg, lat, steps=3, guidance_scale=4.0, dynamic_cfg=True)
    assert len(scales) == 3 and all(s != 4.0 for s in scales)


def test_compute_dtype_of_weights():
    m = torch.nn.Module()
    m.idx = torch.nn.Parameter(torch.zeros(2, dtype=torch.int64), requires_grad=False)  # not floating: skipped
    assert sampling.compute_dtype_of(m) == torch.float32  # no floating weight at all
    m.w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float8_e4m3fn), requires_grad=False)
    assert sampling.compute_dtype_of(m) == torch.bfloat16  # fp8 storage computes in bf16
    m.compute_dtype = torch.float16
    assert sampling.compute_dtype_of(m) == torch.float16


# ---------------------------------------------------------------- transformer.py

@pytest.mark.parametrize("dim, flip, shift", [(32, True, 0), (32, True, 1), (32, False, 1), (33, True, 0)])
def test_timestep_embedding_equals_diffusers(dim, flip, shift):
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0.0, 1.0, 421.0, 999.0])
    expected = get_timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    got = timestep_embedding(t, dim, flip, shift)
    assert got.shape == (4, dim)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_qk_norm_eps_is_cogvideox():
    """CogVideoX's attention normalizes q and k per head with LayerNorm eps 1e-6 (not the blocks' norm_eps);
    the state dict does not carry eps, so the golden numbers barely see it."""
    model = EchoVideoTransformer(TINY)
    attn = model.transformer_blocks[0].attn1
    assert attn.norm_q.eps == 1e-6 and attn.norm_k.eps == 1e-6
    assert model.transformer_blocks[0].norm1.norm.eps == model.config.norm_eps == 1e-5


def test_forward_refuses_bad_shapes(dit):
    ctx = torch.zeros(1, P.text_len, P.text_dim)
    with pytest.raises(EchoVideoInputError, match="^hidden_states: got \\(1, 2, 8, 7, 8\\)"):
        dit(torch.zeros(1, 2, 8, 7, 8), ctx, torch.zeros(1))
    with pytest.raises(EchoVideoInputError, match="^hidden_states: got \\(1, 2, 8, 8, 5\\)"):
        dit(torch.zeros(1, 2, 8, 8, 5), ctx, torch.zeros(1))
    with pytest.raises(EchoVideoInputError, match="^context: got \\(2, 16, 64\\), needs \\[1, tokens, 64\\]"):
        dit(torch.zeros(1, 2, 8, 8, 8), ctx.expand(2, -1, -1), torch.zeros(1))


def test_forward_refuses_a_rope_of_another_size(dit):
    """A RoPE built for another video size fails before the blocks, naming rope and how to build it."""
    c = dit.config
    x, ctx = torch.zeros(1, 2, c.in_channels, 8, 8), torch.zeros(1, P.text_len, P.text_dim)
    own = rotary_embedding_for_video(c.attention_head_dim, c.patch_size, 64, 64, 5)
    assert dit(x, ctx, torch.zeros(1), own).shape[:2] == (1, 2)
    other = rotary_embedding_for_video(c.attention_head_dim, c.patch_size, 128, 128, 5)
    with pytest.raises(EchoVideoInputError, match=r"^rope: got \[\(128, 16\), \(128, 16\)\], needs \(cos, sin\), "
                                                   r"each \(32, 16\): rotary_embedding_for_video"):
        dit(x, ctx, torch.zeros(1), other)


def test_step_cache_signal_is_the_video_part(dit):
    """modulated_video_input: block 0's modulated tokens of the video only (one per patch)."""
    x = torch.randn(1, 2, 8, 8, 8)
    ctx, t = torch.randn(1, P.text_len, P.text_dim), torch.tensor([500.0])
    video, text, temb = dit.embed(x, ctx, t)
    signal = dit.modulated_video_input(video, text, temb)
    assert signal.shape == video.shape == (1, 2 * 4 * 4, P.heads * P.head_dim)
    # written out: LayerNorm of each video token, then block 0's video shift and scale (the first two of six)
    norm1 = dit.transformer_blocks[0].norm1
    shift, scale = norm1.linear(torch.nn.functional.silu(temb)).chunk(6, dim=1)[:2]
    by_hand = torch.nn.functional.layer_norm(video, (video.shape[-1],), norm1.norm.weight, norm1.norm.bias,
                                             norm1.norm.eps) * (1 + scale[:, None]) + shift[:, None]
    torch.testing.assert_close(signal, by_hand, rtol=1e-5, atol=1e-5)
    assert torch.equal(dit.modulated_video_input(video, torch.randn_like(text), temb), signal)  # text plays no part
    assert not torch.allclose(dit.modulated_video_input(video, text, temb * 1.5), signal)  # the timestep does


# ---------------------------------------------------------------- iitf.py / resampler.py

def test_fuse_identity_casts_inputs_to_the_weights_dtype():
    model = tiny.tiny_dit(P, dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    text, face, ident = (torch.randn(1, P.text_len, P.text_dim, generator=g), torch.randn(1, 16, 768, generator=g),
                         torch.randn(1, 512, generator=g))
    expected = model.fuse_identity(text.bfloat16(), face.bfloat16(), ident.bfloat16())
    assert torch.equal(model.fuse_identity(text, face.bfloat16(), ident.bfloat16()), expected)
    assert torch.equal(model.fuse_identity(text.bfloat16(), face, ident.bfloat16()), expected)


def test_fuse_identity_batch_rows_are_independent(dit):
    """A batch of 2 fuses each row as alone (the resampler's learned queries are repeated per row)."""
    g = torch.Generator().manual_seed(0)
    text, face, ident = (torch.randn(2, P.text_len, P.text_dim, generator=g), torch.randn(2, 16, 768, generator=g),
                         torch.randn(2, 512, generator=g))
    both = dit.fuse_identity(text, face, ident)
    assert both.shape == (2, P.text_len, P.text_dim)
    for i in range(2):
        torch.testing.assert_close(both[i:i + 1], dit.fuse_identity(text[i:i + 1], face[i:i + 1], ident[i:i + 1]),
                                   rtol=1e-5, atol=1e-6)


def test_fuse_identity_refuses_batch_mismatch(dit):
    text, face, ident = torch.zeros(1, P.text_len, P.text_dim), torch.zeros(1, 16, 768), torch.zeros(1, 512)
    with pytest.raises(EchoVideoInputError, match="^face_tokens: got \\(2, 16, 768\\), needs \\[1, 16, 768\\]"):
        dit.fuse_identity(text, face.expand(2, -1, -1), ident)
    with pytest.raises(EchoVideoInputError, match="^id_embedding: got \\(2, 512\\), needs \\[1, 512\\]"):
        dit.fuse_identity(text, face, ident.expand(2, -1))


# ---------------------------------------------------------------- siglip.py

@pytest.mark.parametrize("bad", [np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 4), np.uint8),
                                 np.zeros((8, 8, 3), np.int64)])
def test_siglip_pixels_refuse_non_rgb_uint8(bad):
    with pytest.raises(EchoVideoInputError, match="^face image: got "):
        siglip.siglip_pixel_values(bad, 16)


def test_build_siglip_refuses_a_non_vision_config():
    with pytest.raises(CheckpointError, match="not a SigLIP vision config \\(no image_size, patch_size\\)"):
        siglip.build_siglip({"hidden_size": 768})


def test_build_siglip_takes_a_config_saved_with_only_its_non_default_values():
    """A SigLIP vision config that names its type and leaves the base model's values out (as transformers saves
    non-default values only) builds the base model: 224 pixels, patches of 16, width 768."""
    with torch.device("meta"):
        model = siglip.build_siglip({"model_type": "siglip_vision_model", "num_hidden_layers": 1}, device="meta")
    c = model.config
    assert (c.image_size, c.patch_size, c.hidden_size, c.num_hidden_layers) == (224, 16, 768, 1)


def test_load_siglip_state_without_vision_keys_reports_everything_missing():
    model = tiny.tiny_siglip(P)
    state = {k: v for k, v in model.state_dict().items()}
    assert siglip.load_siglip_state(model, {"text_model.x": torch.zeros(1)}) == list(state)


def test_load_siglip_reads_a_full_siglip_config(tmp_path):
    """A folder with a full SigLIP (text + vision) config.json loads the vision tower from `vision_config`."""
    import json

    from safetensors.torch import save_file

    model = tiny.tiny_siglip(P)
    prefixed = any(k.startswith("vision_model.") for k in model.state_dict())
    state = {(k if prefixed else "vision_model." + k): v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    cfg = {"model_type": "siglip", "text_config": {"hidden_size": 32}, "vision_config": tiny.siglip_config(P)}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    loaded = siglip.load_siglip(str(tmp_path))
    assert siglip.image_size_of(loaded) == P.siglip_image_size and loaded.config.intermediate_size == 64


def test_face_tokens_are_float32_for_a_bf16_model():
    model = tiny.tiny_siglip(P).to(torch.bfloat16)
    tokens = siglip.face_tokens(model, torch.zeros(1, 3, 64, 64))
    assert tokens.dtype == torch.float32 and tokens.shape == (1, 16, 768)


def test_resampler_layers_are_ip_adapters():
    """The identity resampler (IP-Adapter's perceiver) uses exact GELU and LayerNorm eps 1e-5 everywhere; the
    state dict carries neither, and on the golden file's small weights the tanh GELU or another eps stays
    inside the tolerance."""
    from echovideo.resampler import IdentityResampler

    r = IdentityResampler(dim=32, depth=2, dim_head=8, heads=4, num_queries=4, embedding_dim=16, output_dim=24)
    gelus = [m for m in r.modules() if isinstance(m, torch.nn.GELU)]
    assert len(gelus) == 2 and all(g.approximate == "none" for g in gelus)
    norms = [m for m in r.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * 3 + 1 and all(n.eps == 1e-5 for n in norms)


@pytest.mark.parametrize("grid, region", [((23, 45), ((4, 0), (27, 45))), ((30, 38), ((0, 4), (30, 42)))])
def test_rope_crop_offset_rounds_halves_to_even(grid, region):
    """(30 - 23) / 2 = 3.5 and (45 - 38) / 2 = 3.5 round to 4 (Python's round, as the published code), not 3."""
    from echovideo.rope import resize_crop_region_for_grid

    assert resize_crop_region_for_grid(grid, 45, 30) == region
