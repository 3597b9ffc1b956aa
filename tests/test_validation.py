"""Inputs are checked where they enter; errors name the argument, what it got and what it needs."""
import numpy as np
import pytest
import torch

from echovideo import sampling, siglip
from echovideo import vae as vae_lib
from echovideo.config import TransformerConfig
from echovideo.errors import CheckpointError, EchoVideoInputError
from echovideo.transformer import EchoVideoTransformer
from echovideo.video import check_video_size

TINY = dict(num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=32,
            text_embed_dim=64, num_layers=1, max_text_seq_length=16, face_seq_length=16)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = EchoVideoTransformer(TINY)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return m.eval()


@pytest.mark.parametrize("w,h,f,arg,needs", [
    (64, 64, 0, "num_frames", "a positive frame count"), (64, 64, -3, "num_frames", "a positive frame count"),
    (64, 72, 9, "height", "multiple of 16"), (70, 64, 9, "width", "multiple of 16")])
def test_video_size(w, h, f, arg, needs):
    with pytest.raises(EchoVideoInputError, match=f"{arg}: got .*needs .*{needs}"):
        check_video_size(w, h, f)
    check_video_size(64, 64, 9)


def test_fuse_identity_shapes(model):
    text, face, ident = torch.zeros(1, 16, 64), torch.zeros(1, 16, 768), torch.zeros(1, 512)
    assert model.fuse_identity(text, face, ident).shape == (1, 16, 64)
    with pytest.raises(EchoVideoInputError, match=r"text_embeds: got \(1, 20, 64\), needs \[batch, 16, 64\]"):
        model.fuse_identity(torch.zeros(1, 20, 64), face, ident)
    with pytest.raises(EchoVideoInputError, match=r"face_tokens: got \(1, 10, 768\)"):
        model.fuse_identity(text, torch.zeros(1, 10, 768), ident)
    with pytest.raises(EchoVideoInputError, match=r"id_embedding: got \(1, 128\), needs \[1, 512\]"):
        model.fuse_identity(text, face, torch.zeros(1, 128))


def test_forward_shapes(model):
    ctx = torch.zeros(1, 16, 64)
    with pytest.raises(EchoVideoInputError, match=r"hidden_states: got \(1, 2, 4, 8, 8\), needs \[batch, latent frames, 8"):
        model(torch.zeros(1, 2, 4, 8, 8), ctx, torch.zeros(1))
    with pytest.raises(EchoVideoInputError, match="context: got"):
        model(torch.zeros(1, 2, 8, 8, 8), torch.zeros(1, 16, 32), torch.zeros(1))
    with pytest.raises(EchoVideoInputError, match="timestep: got"):
        model(torch.zeros(1, 2, 8, 8, 8), ctx, torch.zeros(2))


def test_sampler_inputs(model):
    ctx = torch.zeros(1, 16, 64)
    with pytest.raises(EchoVideoInputError, match="image_latents: got"):
        sampling.sample(model, ctx, ctx, torch.zeros(1, 2, 8, 8, 8), steps=2)
    with pytest.raises(EchoVideoInputError, match="negative_context: got None"):
        sampling.sample(model, ctx, None, torch.zeros(1, 2, 4, 8, 8), steps=2, guidance_scale=6.0)
    with pytest.raises(EchoVideoInputError, match="steps: got 0"):
        sampling.sample(model, ctx, ctx, torch.zeros(1, 2, 4, 8, 8), steps=0)
    for bad in (True, 2.0):
        with pytest.raises(EchoVideoInputError, match=f"steps: got {bad}, needs an integer"):
            sampling.sample(model, ctx, ctx, torch.zeros(1, 2, 4, 8, 8), steps=bad)
    import numpy as np  # numpy integers (e.g. from a sweep) are integers too

    assert torch.equal(sampling.sample(model, ctx, ctx, torch.zeros(1, 2, 4, 8, 8), steps=np.int64(2)),
                       sampling.sample(model, ctx, ctx, torch.zeros(1, 2, 4, 8, 8), steps=2))
    for bad in (float("nan"), float("inf"), None):  # NaN would fail `> 1` and silently drop guidance
        with pytest.raises(EchoVideoInputError, match=f"guidance_scale: got {bad}, needs a finite number"):
            sampling.sample(model, ctx, ctx, torch.zeros(1, 2, 4, 8, 8), steps=2, guidance_scale=bad)


def test_guidance_one_skips_unconditional_branch(model):
    ctx = torch.randn(1, 16, 64)
    caller = sampling.DiTCaller(model)
    batches = []
    orig = model.forward
    model.forward = lambda x, c, t, r: (batches.append(x.shape[0]), orig(x, c, t, r))[1]
    try:
        sampling.sample(model, ctx, None, torch.zeros(1, 2, 4, 8, 8), steps=3, guidance_scale=1.0, dit_caller=caller)
    finally:
        del model.forward
    assert caller.calls == 3 and batches == [1, 1, 1]


def test_unit_guidance_scale_is_detected_only_where_it_is_one():
    """6 steps at g = 6: t = 666 gives scale 1 + 6 (1 - cos(pi (-110)^5)) / 2, 1 within float64 rounding of the huge
    cosine argument; every other step is far from 1. A static scale of 1 + 1e-6 still counts as guidance."""
    from echovideo.guidance import dynamic_guidance_scale, guidance_is_identity

    scheduler = sampling.make_scheduler()
    scheduler.set_timesteps(6)
    scales = {int(t): dynamic_guidance_scale(6.0, int(t), 6) for t in scheduler.timesteps}
    assert sorted(scales) == [166, 332, 499, 666, 832, 999]
    assert [t for t, s in scales.items() if guidance_is_identity(s)] == [666]
    assert abs(scales[666] - 1) < 1e-9 and min(abs(s - 1) for t, s in scales.items() if t != 666) > 1
    assert guidance_is_identity(1.0) and not guidance_is_identity(1.0 + 1e-6)


def test_unit_guidance_step_runs_the_conditional_row_alone():
    """At the step whose guidance scale is 1 the DiT gets the conditional row only (positive context, batch 1);
    the latents equal those of running both rows there, within float32 rounding of uncond + 1 (cond - uncond)."""
    torch.manual_seed(3)
    model = EchoVideoTransformer(TINY).eval()
    for p in model.parameters():  # weights large enough that the two contexts give clearly different predictions
        torch.nn.init.normal_(p, std=0.2)
    pos, neg = torch.randn(1, 16, 64), torch.randn(1, 16, 64)
    lat = torch.randn(1, 2, 4, 8, 8)
    seen = []

    class Recorder(sampling.DiTCaller):
        def __call__(self, x, context, timestep, rope, step_index, num_steps, rows=sampling.ALL_ROWS):
            seen.append((step_index, x.shape[0], context.clone(), rows))
            return super().__call__(x, context, timestep, rope, step_index, num_steps, rows)

    caller = Recorder(model)
    skipped = sampling.sample(model, pos, neg, lat, steps=6, guidance_scale=6.0, seed=1, dit_caller=caller)
    assert [(i, b) for i, b, _, _ in seen] == [(0, 2), (1, 2), (2, 1), (3, 2), (4, 2), (5, 2)]
    assert torch.equal(seen[2][2], pos) and seen[2][3] == sampling.CONDITIONAL_ROW
    assert torch.equal(seen[0][2], torch.cat([neg, pos]))
    assert caller.calls == 6 and caller.cond_only_calls == 1
    both = sampling.DiTCaller(model)
    full = sampling.sample(model, pos, neg, lat, steps=6, guidance_scale=6.0, seed=1, dit_caller=both,
                           skip_unit_guidance=False)
    assert both.calls == 6 and both.cond_only_calls == 0
    torch.testing.assert_close(skipped, full, rtol=0, atol=1e-5 * full.abs().max().item())
    # the other rows' predictions would have changed the result where the scale is not 1
    static = sampling.sample(model, pos, neg, lat, steps=6, guidance_scale=6.0, seed=1, dynamic_cfg=False)
    assert (static - full).abs().max() > 1e-3 * full.abs().max()  # 100x the tolerance above
    uncond_there = sampling.sample(model, neg, neg, lat, steps=6, guidance_scale=6.0, seed=1, skip_unit_guidance=False)
    assert (uncond_there - full).abs().max() > 1e-3 * full.abs().max()


def test_config_refuses_non_echovideo():
    with pytest.raises(CheckpointError, match="in_channels = 2 x out_channels"):
        TransformerConfig.from_dict({**TINY, "in_channels": 4})
    with pytest.raises(CheckpointError, match="patch_size_t.*; pick the EchoVideo transformer here"):
        TransformerConfig.from_dict({**TINY, "patch_size_t": 2})


@pytest.mark.parametrize("config, named", [
    ({"_class_name": "AutoencoderKLCogVideoX", "in_channels": 3, "out_channels": 3, "latent_channels": 16,
      "down_block_types": ["CogVideoXDownBlock3D"] * 4}, r"a VAE's \(AutoencoderKLCogVideoX\), not the EchoVideo "
                                                         "transformer's: load it with EchoVideo VAE Loader, and pick"),
    ({"in_channels": 3, "out_channels": 3, "down_block_types": []}, r"a VAE's \(down_block_types\), not the "),
    ({"model_type": "t5", "d_model": 4096}, r"a transformers 't5' model's \(a text or vision encoder\), not the "
                                            "EchoVideo transformer's: pick"),
    ({"model_type": "siglip_vision_model", "hidden_size": 768}, "a transformers 'siglip_vision_model' model's")])
def test_config_of_another_model_is_named_with_the_fix(config, named):
    """A VAE or encoder folder picked in the Model Loader (a release folder lists them all): named, with the fix."""
    with pytest.raises(CheckpointError, match=f"^the config is {named}.* the EchoVideo transformer here "
                                              r"\(the release's transformer/ folder"):
        TransformerConfig.from_dict(config)


def test_image_inputs():
    with pytest.raises(EchoVideoInputError, match="face image: got"):
        siglip.siglip_pixel_values(np.zeros((8, 8), np.uint8), 16)
    with pytest.raises(EchoVideoInputError, match="face image: got"):
        vae_lib.first_frame_pixels(np.zeros((8, 8, 3), np.float32), 64, 64)


# the published pipeline's crop of the 30 x 45 base grid (480 x 720 pixels / 16) for its five demo sizes,
# worked by hand from its get_resize_crop_region_for_grid (Python's round: halves to even)
@pytest.mark.parametrize("height, width, region", [
    (480, 640, ((0, 2), (30, 42))), (480, 848, ((2, 0), (27, 45))), (480, 480, ((0, 8), (30, 38))),
    (848, 480, ((0, 14), (30, 31))), (640, 480, ((0, 12), (30, 34)))])
def test_rope_crop_region_at_the_published_sizes(height, width, region):
    from echovideo.rope import resize_crop_region_for_grid

    assert resize_crop_region_for_grid((height // 16, width // 16), 45, 30) == region


def test_rope_positions_at_480x848():
    """The default landscape size: height positions linspace(2, 27, 30), width linspace(0, 45, 53) (diffusers 0.31,
    endpoint=False), read back from the first (frequency 1) sine of each axis."""
    from echovideo.rope import rotary_embedding_for_video

    cos, sin = rotary_embedding_for_video(64, 2, 480, 848, 49)
    sin = sin.reshape(13, 30, 53, 64)  # head_dim 64: t 16, h 24, w 24 columns
    want_h = np.sin(np.linspace(2, 27, 30, endpoint=False, dtype=np.float32))
    want_w = np.sin(np.linspace(0, 45, 53, endpoint=False, dtype=np.float32))
    np.testing.assert_allclose(sin[0, :, 0, 16].numpy(), want_h, atol=1e-6)
    np.testing.assert_allclose(sin[0, 0, :, 40].numpy(), want_w, atol=1e-6)
    np.testing.assert_allclose(sin[:, 0, 0, 0].numpy(), np.sin(np.arange(13, dtype=np.float32)), atol=1e-6)


def test_dtype_names():
    """The names every option (CLI --dtype, loader combos) maps through."""
    from echovideo.ops import DTYPES

    assert DTYPES["fp32"] is torch.float32 and DTYPES["bf16"] is torch.bfloat16 and DTYPES["fp16"] is torch.float16
    assert DTYPES["fp8_e4m3fn"] is torch.float8_e4m3fn and DTYPES["fp8_e5m2"] is torch.float8_e5m2


def test_degenerate_face_keypoints_are_a_face_error():
    from echovideo.face import FaceError
    from echovideo.face.align import alignment_matrix

    with pytest.raises(FaceError, match="keypoints are degenerate"):
        alignment_matrix(np.full((5, 2), 100.0, np.float32))
