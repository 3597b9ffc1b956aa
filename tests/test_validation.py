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
    (64, 64, 8, "num_frames", "4k\\+1"), (64, 64, 0, "num_frames", "4k\\+1"),
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


def test_config_refuses_non_echovideo():
    with pytest.raises(CheckpointError, match="in_channels = 2 x out_channels"):
        TransformerConfig.from_dict({**TINY, "in_channels": 4})
    with pytest.raises(CheckpointError, match="patch_size_t"):
        TransformerConfig.from_dict({**TINY, "patch_size_t": 2})


def test_image_inputs():
    with pytest.raises(EchoVideoInputError, match="face image: got"):
        siglip.siglip_pixel_values(np.zeros((8, 8), np.uint8), 16)
    with pytest.raises(EchoVideoInputError, match="face image: got"):
        vae_lib.first_frame_pixels(np.zeros((8, 8, 3), np.float32), 64, 64)
