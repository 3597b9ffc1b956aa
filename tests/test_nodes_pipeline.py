"""The whole node chain in a real ComfyUI (in-process) on tiny random models equals echovideo.pipeline.generate."""
import os

import numpy as np
import pytest
import torch

import comfy_env

pytestmark = comfy_env.requires_comfyui
import transformers  # noqa: E402

T = comfy_env.TINY
W, H, FRAMES, STEPS = T["width"], T["height"], T["frames"], T["steps"]


@pytest.fixture(scope="module")
def env(module_tmp_path):
    comfy_env.setup_comfy()
    import folder_paths

    root = module_tmp_path
    made = comfy_env.write_tiny_models(root)
    face = made["face"]
    p = made["preset"]

    saved = {k: folder_paths.folder_names_and_paths.get(k) for k in
             ("diffusion_models", "vae", "clip_vision", "text_encoders", "insightface", "facexlib")}
    comfy_env.load_pack()
    for k in ("diffusion_models", "vae", "clip_vision", "text_encoders"):
        folder_paths.folder_names_and_paths[k] = ([str(root / k)], {".safetensors"})
    folder_paths.folder_names_and_paths["insightface"] = ([face["insightface_root"]], set())
    folder_paths.folder_names_and_paths["facexlib"] = ([face["facexlib_dir"]], {".pth"})
    folder_paths.filename_list_cache.clear()
    yield dict(root=root, preset=p)
    for k, v in saved.items():
        if v is None:
            folder_paths.folder_names_and_paths.pop(k, None)
        else:
            folder_paths.folder_names_and_paths[k] = v
    folder_paths.filename_list_cache.clear()


def photo(seed=0, h=480, w=480):
    return torch.from_numpy(np.random.default_rng(seed).random((1, h, w, 3)).astype(np.float32))


def run_chain(seed=7, cfg=6.0):
    tn = comfy_env.pack_module("nodes.text_nodes")
    mn = comfy_env.pack_module("nodes.model_nodes")
    fn = comfy_env.pack_module("nodes.face_nodes")
    sn = comfy_env.pack_module("nodes.sampling_nodes")
    run = comfy_env.run_node
    (t5,) = run(tn.T5Loader, t5_name="t5_tiny.safetensors", precision="fp32")
    (text,) = run(tn.TextEncode, positive="a man smiles at the camera", negative="", t5=t5)
    (model,) = run(mn.ModelLoader, model_name="echo_tiny.safetensors", weight_dtype="default", attention="sdpa")
    (vae,) = run(mn.VaeLoader, vae_name="vae_tiny.safetensors", precision="fp32")
    (enc,) = run(fn.FaceEncoderLoader, siglip_name="siglip_tiny.safetensors", face_device="cpu")
    identity, ref, crops = run(fn.FaceEncode, face_encoder=enc, image=photo(), face_index=0, whole_image=False,
                               average_embeddings=False)
    (cond,) = run(fn.IITFFusion, model=model, text=text, identity=identity)
    (img_lat,) = run(sn.FaceFrameEncode, vae=vae, image=ref, width=W, height=H, num_frames=FRAMES)
    (latent,) = run(sn.Sampler, model=model, conditioning=cond, image_latents=img_lat, steps=STEPS, cfg=cfg,
                    dynamic_cfg=True, seed=seed)
    (frames,) = run(sn.VAEDecode, vae=vae, latent=latent, tiling=False, tile_size=0)
    return dict(t5=t5, text=text, model=model, vae=vae, enc=enc, identity=identity, ref=ref, crops=crops,
                cond=cond, img_lat=img_lat, latent=latent, frames=frames)


def test_face_frame_encode_keeps_a_portrait_photo_in_proportion(env):
    """A whole-image reference taller than the video is padded to the video's aspect, not stretched (the published
    padding rule would stretch it 1.5x); a square crop is encoded as the reference pads it."""
    mn = comfy_env.pack_module("nodes.model_nodes")
    sn = comfy_env.pack_module("nodes.sampling_nodes")
    from echovideo import vae as vae_lib

    (vae,) = comfy_env.run_node(mn.VaeLoader, vae_name="vae_tiny.safetensors", precision="fp32")
    for h, w, keep in ((96, 64, True), (64, 64, False)):
        image = photo(3, h, w)
        (encoded,) = comfy_env.run_node(sn.FaceFrameEncode, vae=vae, image=image, width=96, height=64,
                                        num_frames=FRAMES)
        face = sn.image_to_uint8(image)
        expected = vae_lib.encode_face_frame(vae.vae, face, 96, 64, FRAMES, keep_proportions=keep)
        torch.testing.assert_close(encoded.latents, expected.float(), rtol=0, atol=0)
    stretched = vae_lib.encode_face_frame(vae.vae, sn.image_to_uint8(photo(3, 96, 64)), 96, 64, FRAMES)
    (kept,) = comfy_env.run_node(sn.FaceFrameEncode, vae=vae, image=photo(3, 96, 64), width=96, height=64,
                                 num_frames=FRAMES)
    assert not torch.allclose(kept.latents, stretched.float())


def test_chain_equals_library_pipeline(env):
    from echovideo import pipeline
    unwrap = comfy_env.pack_module("nodes.bridge").unwrap

    out = run_chain()
    frames = out["frames"]
    assert frames.shape == (FRAMES, H, W, 3) and 0 <= frames.min() and frames.max() <= 1
    assert out["latent"]["samples"].shape == (1, 4, (FRAMES - 1) // 4 + 1, H // 8, W // 8)
    assert out["crops"].shape == (1, 512, 512, 3)

    ident = out["identity"]
    # each stage's output equals the library's from the same inputs (the tiny DiT barely reacts to its context,
    # so a wiring mistake, e.g. the positive text in the negative branch, would hide in the frames)
    from echovideo import text as text_lib
    from echovideo import vae as vae_lib

    t5 = out["t5"]
    assert torch.equal(out["text"].positive, text_lib.encode_prompt(unwrap(t5.patcher), t5.tokenizer,
                                                                    "a man smiles at the camera"))
    assert torch.equal(out["text"].negative, text_lib.encode_prompt(unwrap(t5.patcher), t5.tokenizer, ""))
    face_pos, face_neg = pipeline.face_tokens_pair(unwrap(out["enc"].siglip), ident.face_crop.numpy())
    cond = pipeline.fuse_conditioning(out["model"].model, out["text"].positive, out["text"].negative, face_pos,
                                      face_neg, ident.id_embedding)
    assert torch.equal(out["cond"].positive, cond.positive) and torch.equal(out["cond"].negative, cond.negative)
    assert not torch.equal(cond.positive, cond.negative)
    image_latents = vae_lib.encode_face_frame(out["vae"].vae, ident.face_crop.numpy(), W, H, FRAMES)
    assert torch.equal(out["img_lat"].latents, image_latents)
    want = pipeline.generate(out["model"].model, out["vae"].vae, unwrap(out["enc"].siglip),
                             out["text"].positive, out["text"].negative, ident.face_crop.numpy(),
                             ident.id_embedding, W, H, FRAMES, steps=STEPS, guidance_scale=6.0, dynamic_cfg=True,
                             seed=7, tiling=False)
    torch.testing.assert_close(frames, want, rtol=1e-5, atol=1e-5)


def test_sampler_progress_and_interrupt(env, monkeypatch):
    import comfy.model_management as mm
    import comfy.utils

    from comfy.cli_args import LatentPreviewMethod, args

    calls = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda v, t, preview, node_id=None: calls.append((v, t, preview)))
    monkeypatch.setattr(args, "preview_method", LatentPreviewMethod.Latent2RGB)
    out = run_chain(cfg=1.0)
    steps = [c for c in calls if c[1] == STEPS]
    assert [c[0] for c in steps] == list(range(1, STEPS + 1))
    assert all(c[2] is not None and c[2][0] == "JPEG" for c in steps)  # latent previews

    sn = comfy_env.pack_module("nodes.sampling_nodes")
    mm.interrupt_current_processing(True)
    sample_until_cancelled(out, cfg=6.0)
    assert out["model"].model.block_hook is None  # hook restored

    # VAE Decode: asks ComfyUI for its memory, reports every frame chunk and can be cancelled between chunks
    bridge = comfy_env.pack_module("nodes.bridge")
    asked = []
    monkeypatch.setattr(bridge, "load_gpu", lambda p, memory_required=0: asked.append(memory_required))
    chunks = []

    def cancel_after_first_chunk(v, t, preview, node_id=None):
        chunks.append(v)
        mm.interrupt_current_processing(True)

    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", cancel_after_first_chunk)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            long_latent = {"samples": torch.randn(1, 4, 5, H // 8, W // 8)}  # 5 latent frames: 2 chunks
            comfy_env.run_node(sn.VAEDecode, vae=out["vae"], latent=long_latent, tiling=False, tile_size=0)
    finally:
        mm.interrupt_current_processing(False)
    # untiled fp32: the whole frame as the region, and 17 decoded frames (5 latent frames)
    assert chunks == [1] and asked == [20000 * H * W * 4 + 17 * 3 * H * W * (2 * 4 + 4)]


def test_face_encode_reports_each_photo_and_cancels_between_them(env, monkeypatch):
    import comfy.model_management as mm
    import comfy.utils

    fn = comfy_env.pack_module("nodes.face_nodes")
    (enc,) = comfy_env.run_node(fn.FaceEncoderLoader, siglip_name="siglip_tiny.safetensors", face_device="cpu")
    three = torch.cat([photo(0), photo(1), photo(2)], dim=0)
    reported = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda v, t, preview, node_id=None: reported.append((v, t)))
    comfy_env.run_node(fn.FaceEncode, face_encoder=enc, image=three, face_index=0, whole_image=False,
                       average_embeddings=True)
    assert reported == [(0, 3), (1, 3), (2, 3), (3, 3)]

    def cancel_after_first_photo(v, t, preview, node_id=None):
        reported.append((v, t))
        if v == 1:
            mm.interrupt_current_processing(True)

    reported.clear()
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", cancel_after_first_photo)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            comfy_env.run_node(fn.FaceEncode, face_encoder=enc, image=three, face_index=0, whole_image=False,
                               average_embeddings=True)
    finally:
        mm.interrupt_current_processing(False)
    assert reported == [(0, 3), (1, 3)]  # stopped before the second photo


def sample_until_cancelled(out, cfg=1.0):
    """Runs the Sampler on run_chain's outputs, expecting a cancel; clears the cancel flag afterwards."""
    import comfy.model_management as mm

    sn = comfy_env.pack_module("nodes.sampling_nodes")
    try:
        with pytest.raises(mm.InterruptProcessingException):
            comfy_env.run_node(sn.Sampler, model=out["model"], conditioning=out["cond"],
                               image_latents=out["img_lat"], steps=STEPS, cfg=cfg, dynamic_cfg=True, seed=1)
    finally:
        mm.interrupt_current_processing(False)


def test_sampler_checks_cancel_after_each_step(env, monkeypatch):
    """A cancel pressed during the last step's progress report stops the Sampler there: no DiT block runs
    after it, so only the Sampler's own per-step check can see it."""
    import comfy.model_management as mm
    import comfy.utils

    out = run_chain(cfg=1.0)
    reported = []

    def cancel_at_last_step(v, t, preview, node_id=None):
        reported.append(v)
        if t == STEPS and v == STEPS:
            mm.interrupt_current_processing(True)

    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", cancel_at_last_step)
    sample_until_cancelled(out)
    assert reported[-1] == STEPS


def test_sampler_cancel_stops_between_blocks(env, monkeypatch):
    """A cancel pressed while block 0 runs stops before block 1: the step is never finished or reported."""
    import comfy.model_management as mm
    import comfy.utils

    out = run_chain(cfg=1.0)
    dit = out["model"].model
    reported, blocks_run = [], []

    class CancelInFirstBlock:
        def before(self, index, block):
            blocks_run.append(index)

        def after(self, index, block):
            mm.interrupt_current_processing(True)

    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda v, t, preview, node_id=None: reported.append(v))
    dit.block_hook = CancelInFirstBlock()
    try:
        sample_until_cancelled(out)
    finally:
        dit.block_hook = None
    assert blocks_run == [0] and reported == []


def test_sampler_widgets_reach_the_sampling(env, monkeypatch):
    """dynamic_cfg, the Step Cache's settings and VAE Decode's tile size reach the library as set."""
    out = run_chain()
    sn = comfy_env.pack_module("nodes.sampling_nodes")
    import echovideo.sampling
    import echovideo.vae

    seen = {}
    real_sample, real_decode = echovideo.sampling.sample, echovideo.vae.decode_to_images

    def spy_sample(*a, **kw):
        seen["sample"] = kw
        return real_sample(*a, **kw)

    def spy_decode(*a, **kw):
        seen["decode"] = kw
        return real_decode(*a, **kw)

    monkeypatch.setattr(echovideo.sampling, "sample", spy_sample)
    monkeypatch.setattr(echovideo.vae, "decode_to_images", spy_decode)
    (latent,) = comfy_env.run_node(sn.Sampler, model=out["model"], conditioning=out["cond"],
                                   image_latents=out["img_lat"], steps=STEPS, cfg=6.0, dynamic_cfg=False, seed=7)
    assert seen["sample"]["dynamic_cfg"] is False and seen["sample"]["seed"] == 7
    assert seen["sample"]["skip_unit_guidance"] is True
    # ComfyUI's model option that keeps the unconditional pass at scale 1, set on a clone of the patcher
    import dataclasses

    keeping = dataclasses.replace(out["model"], patcher=out["model"].patcher.clone())
    keeping.patcher.model_options["disable_cfg1_optimization"] = True
    comfy_env.run_node(sn.Sampler, model=keeping, conditioning=out["cond"], image_latents=out["img_lat"],
                       steps=STEPS, cfg=6.0, dynamic_cfg=False, seed=7)
    assert seen["sample"]["skip_unit_guidance"] is False
    assert "disable_cfg1_optimization" not in out["model"].patcher.model_options
    assert not torch.equal(latent["samples"], out["latent"]["samples"])  # run_chain sampled with dynamic_cfg on
    comfy_env.run_node(sn.VAEDecode, vae=out["vae"], latent=latent, tiling=True, tile_size=96)
    assert seen["decode"]["tiling"] is True and seen["decode"]["tile_size"] == 96


def test_vae_decode_warns_about_latents_not_from_the_sampler(env, caplog):
    """Another video model's 16-channel latent has the same shape: VAE Decode decodes it but says where it did
    not come from; the Sampler's own LATENT decodes without the warning."""
    out = run_chain(cfg=1.0)
    sn = comfy_env.pack_module("nodes.sampling_nodes")
    with caplog.at_level("WARNING", logger="EchoVideo"):
        (own,) = comfy_env.run_node(sn.VAEDecode, vae=out["vae"], latent=out["latent"], tiling=False, tile_size=0)
    assert "did not come straight from EchoVideo Sampler" not in caplog.text
    with caplog.at_level("WARNING", logger="EchoVideo"):
        (bare,) = comfy_env.run_node(sn.VAEDecode, vae=out["vae"], latent={"samples": out["latent"]["samples"]},
                                     tiling=False, tile_size=0)
    assert "did not come straight from EchoVideo Sampler" in caplog.text
    assert torch.equal(own, bare)


def test_preview_image_from_latents():
    bridge = comfy_env.pack_module("nodes.bridge")
    img = bridge.latent_preview_image(torch.randn(1, 3, 16, 8, 10))
    assert img.size == (40, 32)


def test_bad_inputs_give_clear_errors(env):
    sn = comfy_env.pack_module("nodes.sampling_nodes")
    mn = comfy_env.pack_module("nodes.model_nodes")
    fn = comfy_env.pack_module("nodes.face_nodes")
    assert "needs 8k+1 frames (1, 9, 17" in sn.FaceFrameEncode.validate_inputs(width=64, height=64, num_frames=10)
    assert "multiple of 16" in sn.FaceFrameEncode.validate_inputs(width=70, height=64, num_frames=9)
    assert sn.FaceFrameEncode.validate_inputs(width=64, height=64, num_frames=9) is True
    both = sn.FaceFrameEncode.validate_inputs(width=70, height=64, num_frames=10)  # every problem at once
    assert "num_frames: got 10" in both and "width: got 70" in both and "height" not in both
    assert "8k+1" in sn.FaceFrameEncode.validate_inputs(width=64, height=64, num_frames=13)  # would decode to 16
    assert sn.FaceFrameEncode.validate_inputs(width=64, height=64, num_frames=17) is True
    for bad in (16, 48, 72):
        assert "tile_size: got %d, needs a multiple of 16, at least 64" % bad in sn.VAEDecode.validate_inputs(tile_size=bad)
    assert sn.VAEDecode.validate_inputs(tile_size=0) is True and sn.VAEDecode.validate_inputs(tile_size=64) is True
    # with validate_inputs ComfyUI skips the widgets' max checks: the nodes check the maxima themselves
    assert "tile_size: got 4096, needs at most 2048" in sn.VAEDecode.validate_inputs(tile_size=4096)
    big = sn.FaceFrameEncode.validate_inputs(width=4096, height=64, num_frames=265)
    assert "width: got 4096, needs at most 2048" in big and "num_frames: got 265, needs at most 257" in big
    # an attention backend that is not installed is named as such, before (and not blamed on) the model file
    import sys

    from echovideo.errors import EchoVideoInputError

    saved = sys.modules.get("sageattention")
    sys.modules["sageattention"] = None
    try:
        with pytest.raises(EchoVideoInputError, match="^EchoVideo Model Loader: attention: got 'sage'") as e:
            comfy_env.run_node(mn.ModelLoader, model_name="echo_tiny.safetensors", attention="sage")
        assert "echo_tiny" not in str(e.value)
    finally:
        if saved is None:
            del sys.modules["sageattention"]
        else:
            sys.modules["sageattention"] = saved
    with pytest.raises(FileNotFoundError, match="diffusion_models.*README"):
        comfy_env.run_node(mn.ModelLoader, model_name="missing.safetensors")
    # a VAE file given as the transformer
    import shutil

    shutil.copy(env["root"] / "vae" / "vae_tiny.safetensors", env["root"] / "diffusion_models" / "wrong.safetensors")
    with pytest.raises(ValueError, match="Model Loader: .*wrong.safetensors: the config is a VAE's .*, not the "
                                         "EchoVideo transformer's: load it with EchoVideo VAE Loader"):
        comfy_env.run_node(mn.ModelLoader, model_name="wrong.safetensors")
    # a half-downloaded file
    data = (env["root"] / "diffusion_models" / "echo_tiny.safetensors").read_bytes()
    (env["root"] / "diffusion_models" / "cut.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="Model Loader: cut.safetensors could not be loaded .*SafetensorError.*"
                                         "completely downloaded"):
        comfy_env.run_node(mn.ModelLoader, model_name="cut.safetensors")
    # a transformer file given as the VAE
    shutil.copy(env["root"] / "diffusion_models" / "echo_tiny.safetensors", env["root"] / "vae" / "wrong_vae.safetensors")
    with pytest.raises(ValueError, match="VAE Loader: .*wrong_vae.safetensors.*CogVideoX VAE"):
        comfy_env.run_node(mn.VaeLoader, vae_name="wrong_vae.safetensors")
    # a transformer file given as SigLIP
    shutil.copy(env["root"] / "diffusion_models" / "echo_tiny.safetensors", env["root"] / "clip_vision" / "w.safetensors")
    with pytest.raises(ValueError, match="Face Encoder Loader: .*w.safetensors.*SigLIP"):
        comfy_env.run_node(fn.FaceEncoderLoader, siglip_name="w.safetensors", face_device="cpu")
    with pytest.raises(ValueError, match="empty"):
        fn.image_to_uint8(torch.zeros(0, 64, 64, 3))
    (vae,) = comfy_env.run_node(mn.VaeLoader, vae_name="vae_tiny.safetensors", precision="fp32")
    for samples in (torch.zeros(1, 4, 8, 8), torch.zeros(1, 16, 3, 8, 8)):  # an image latent; other channels
        with pytest.raises(ValueError, match=r"VAE Decode: latent is \(1, .*needs a video latent \[B, 4, F, h, w\]"):
            comfy_env.run_node(sn.VAEDecode, vae=vae, latent={"samples": samples}, tiling=True, tile_size=0)
    # linked values skip the widgets' limits: the nodes check them, naming themselves
    with pytest.raises(ValueError, match=r"^EchoVideo VAE Decode: tile_size: got 40, needs a multiple of 16"):
        comfy_env.run_node(sn.VAEDecode, vae=vae, latent={"samples": torch.zeros(1, 4, 2, 8, 8)}, tiling=True,
                           tile_size=40)
    for steps, cfg, want in ((0, 6.0, "steps: got 0, needs an integer from 1 to 500"),
                             (501, 6.0, "steps: got 501"),
                             (2, 0.2, r"cfg: got 0.2, needs a number from 1.0 to 30.0 \(1.0 turns guidance off\)"),
                             (2, float("nan"), "cfg: got nan"), (2, 31.0, "cfg: got 31.0")):
        with pytest.raises(ValueError, match="^EchoVideo Sampler: " + want):
            comfy_env.run_node(sn.Sampler, model=None, conditioning=None, image_latents=None, steps=steps, cfg=cfg,
                               dynamic_cfg=True, seed=0)
    with pytest.raises(ValueError, match="holds 2 images.*reference_image"):
        comfy_env.run_node(sn.FaceFrameEncode, vae=None, image=torch.zeros(2, 64, 64, 3), width=64, height=64,
                           num_frames=9)


def test_sampler_names_the_link_made_for_another_model(env):
    """Conditioning fused by another model, or face-frame latents from another VAE: the Sampler names the link and
    what to connect, before loading anything (not the DiT's shape check deep in the loop)."""
    mn = comfy_env.pack_module("nodes.model_nodes")
    sn = comfy_env.pack_module("nodes.sampling_nodes")
    types = comfy_env.pack_module("nodes.types")
    (model,) = comfy_env.run_node(mn.ModelLoader, model_name="echo_tiny.safetensors", weight_dtype="default",
                                  attention="sdpa")
    c = model.model.config
    lat = torch.zeros(1, 3, c.out_channels, 8, 8)
    good_cond = types.ConditioningData(positive=torch.zeros(1, 226, c.text_embed_dim),
                                       negative=torch.zeros(1, 226, c.text_embed_dim))
    wide = types.ConditioningData(positive=torch.zeros(1, 226, c.text_embed_dim + 8),
                                  negative=torch.zeros(1, 226, c.text_embed_dim + 8))
    latents = types.ImageLatentsData(latents=lat, width=64, height=64, num_frames=9)
    other_vae = types.ImageLatentsData(latents=torch.zeros(1, 3, c.out_channels + 1, 8, 8), width=64, height=64,
                                       num_frames=9)
    run = dict(model=model, steps=2, cfg=6.0, dynamic_cfg=True, seed=1)
    with pytest.raises(ValueError, match=f"^EchoVideo Sampler: conditioning: {c.text_embed_dim + 8} wide, this "
                                         f"model takes {c.text_embed_dim}: .*same Model Loader"):
        comfy_env.run_node(sn.Sampler, conditioning=wide, image_latents=latents, **run)
    with pytest.raises(ValueError, match=f"^EchoVideo Sampler: image_latents: {c.out_channels + 1} latent channels, "
                                         f"this model takes {c.out_channels}: .*Face Frame Encode"):
        comfy_env.run_node(sn.Sampler, conditioning=good_cond, image_latents=other_vae, **run)
    assert sn.model_link_problem(c, good_cond, latents) is None


def test_loader_options_reach_the_models(env, monkeypatch):
    """Face Encoder Loader 'auto' runs the face models on ComfyUI's device and SigLIP in the compute dtype;
    the VAE Loader's precision is the VAE's dtype; an out-of-memory while loading stays one (not 'wrong file')."""
    import echovideo.face

    fn = comfy_env.pack_module("nodes.face_nodes")
    mn = comfy_env.pack_module("nodes.model_nodes")
    bridge = comfy_env.pack_module("nodes.bridge")
    devices = []
    real_load = echovideo.face.load_face_models
    monkeypatch.setattr(echovideo.face, "load_face_models",
                        lambda paths, device: (devices.append(device), real_load(paths, "cpu"))[1])
    monkeypatch.setattr(bridge, "torch_device", lambda: torch.device("cuda", 0))
    monkeypatch.setattr(bridge, "compute_dtype", lambda device=None, model_params=0: torch.bfloat16)
    (enc,) = comfy_env.run_node(fn.FaceEncoderLoader, siglip_name="siglip_tiny.safetensors", face_device="auto")
    assert devices == ["cuda:0"] and enc.face_models[1] == "cuda:0"
    assert {p.dtype for p in bridge.unwrap(enc.siglip).parameters()} == {torch.bfloat16}
    (enc_cpu,) = comfy_env.run_node(fn.FaceEncoderLoader, siglip_name="siglip_tiny.safetensors", face_device="cpu")
    assert devices[-1] == "cpu" and enc_cpu.face_models[1] == "cpu"
    monkeypatch.undo()
    (vae,) = comfy_env.run_node(mn.VaeLoader, vae_name="vae_tiny.safetensors", precision="fp16")  # never a default
    assert vae.dtype == torch.float16 and {p.dtype for p in vae.vae.parameters()} == {torch.float16}
    with pytest.raises(torch.OutOfMemoryError):
        with mn.named_errors("EchoVideo Model Loader", "/models/x.safetensors", "an EchoVideo transformer"):
            raise torch.OutOfMemoryError("out of memory")
    with pytest.raises(ValueError, match="Model Loader: x.safetensors could not be loaded .*RuntimeError: boom"):
        with mn.named_errors("EchoVideo Model Loader", "/models/x.safetensors", "an EchoVideo transformer"):
            raise RuntimeError("boom")
    cpu_oom = ("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
               "allocate 11231711232 bytes. Error code 12 (Cannot allocate memory)")
    with pytest.raises(MemoryError, match="^EchoVideo Model Loader: not enough RAM to load x.safetensors .*fp8"):
        with mn.named_errors("EchoVideo Model Loader", "/models/x.safetensors", "an EchoVideo transformer"):
            raise RuntimeError(cpu_oom)


def _sample_with(model, out, seed=3):
    sn = comfy_env.pack_module("nodes.sampling_nodes")
    (latent,) = comfy_env.run_node(sn.Sampler, model=model, conditioning=out["cond"], image_latents=out["img_lat"],
                                   steps=STEPS, cfg=6.0, dynamic_cfg=True, seed=seed)
    return latent["samples"]


def test_fp8_weights_and_comfy_attention(env, monkeypatch):
    import comfy.ldm.modules.attention as comfy_attention

    mn = comfy_env.pack_module("nodes.model_nodes")
    calls = []
    real = comfy_attention.optimized_attention
    monkeypatch.setattr(comfy_attention, "optimized_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = run_chain()
    base = _sample_with(out["model"], out)
    (fp8,) = comfy_env.run_node(mn.ModelLoader, model_name="echo_tiny.safetensors", weight_dtype="fp8_e4m3fn",
                                attention="sdpa")
    assert any(p.dtype == torch.float8_e4m3fn for p in fp8.model.parameters())
    got = _sample_with(fp8, out)
    assert torch.isfinite(got).all()
    # fp8 rounding only: 1.2% seen; a DiT whose output is zero lands about 24% away
    assert (got - base).abs().mean() < 0.05 * base.abs().mean()
    assert calls == []  # sdpa: ComfyUI's attention is not used
    (comfy_attn,) = comfy_env.run_node(mn.ModelLoader, model_name="echo_tiny.safetensors", weight_dtype="default",
                                       attention="comfy")
    torch.testing.assert_close(_sample_with(comfy_attn, out), base, rtol=1e-4, atol=1e-4)
    # the loader's choice reaches the blocks: one ComfyUI attention call per block and DiT call
    dit = comfy_env.pack_module("nodes.bridge").unwrap(comfy_attn.patcher)
    assert len(calls) == dit.config.num_layers * STEPS  # one DiT call per step (CFG rows batched)


def test_face_encode_options(env):
    fn = comfy_env.pack_module("nodes.face_nodes")
    (enc,) = comfy_env.run_node(fn.FaceEncoderLoader, siglip_name="siglip_tiny.safetensors", face_device="cpu")
    two = torch.cat([photo(0), photo(1)], dim=0)
    ident, ref, crops = comfy_env.run_node(fn.FaceEncode, face_encoder=enc, image=two, face_index=1,
                                           whole_image=True, average_embeddings=True)
    assert crops.shape == (2, 512, 512, 3)
    assert ref.shape == (1, 480, 480, 3)  # whole photo as reference
    assert ident.id_embedding.shape == (1, 512) and ident.face_tokens.shape == (1, 16, 768)
    assert ident.extra["negative_face_tokens"].shape == (1, 16, 768)
    # as the published code's non-aligned mode: SigLIP reads the first photo whole, as the reference frame shows it
    from echovideo.pipeline import face_tokens_pair

    siglip = comfy_env.pack_module("nodes.bridge").unwrap(enc.siglip)
    want_pos, want_neg = face_tokens_pair(siglip, (ref[0].numpy() * 255).round().astype(np.uint8))
    crop_pos, _ = face_tokens_pair(siglip, (crops[0].numpy() * 255).round().astype(np.uint8))
    assert not torch.equal(want_pos, crop_pos)
    assert torch.equal(ident.face_tokens, want_pos) and torch.equal(ident.extra["negative_face_tokens"], want_neg)
    assert torch.equal(ident.face_crop, (crops[0] * 255).round().to(torch.uint8))
    singles = [comfy_env.run_node(fn.FaceEncode, face_encoder=enc, image=photo(i), face_index=1, whole_image=True,
                                  average_embeddings=False)[0].id_embedding for i in (0, 1)]
    assert not torch.allclose(singles[0], singles[1])
    # the average: the photos' mean direction at their mean length (bf16-rounded like every id embedding)
    mean = (singles[0] + singles[1]) / 2
    assert torch.nn.functional.cosine_similarity(ident.id_embedding, mean).item() > 0.999
    assert abs(ident.id_embedding.norm() / ((singles[0].norm() + singles[1].norm()) / 2) - 1) < 0.01
    with pytest.raises(ValueError, match="2 photos.*average_embeddings"):
        comfy_env.run_node(fn.FaceEncode, face_encoder=enc, image=two, face_index=1, whole_image=True,
                           average_embeddings=False)
    _, ref1, _ = comfy_env.run_node(fn.FaceEncode, face_encoder=enc, image=photo(0), face_index=1,
                                    whole_image=False, average_embeddings=False)
    assert ref1.shape == (1, 512, 512, 3)  # parsed face crop as reference
    with pytest.raises(ValueError, match="face_index 5 is out of range"):
        comfy_env.run_node(fn.FaceEncode, face_encoder=enc, image=photo(0), face_index=5, whole_image=False,
                           average_embeddings=False)
    with pytest.raises(ValueError, match="empty"):
        comfy_env.run_node(fn.FaceEncode, face_encoder=enc, image=torch.zeros(0, 64, 64, 3), face_index=0,
                           whole_image=False, average_embeddings=False)


def test_face_encoder_loader_frees_the_face_models_it_checked_on_the_gpu(env, monkeypatch):
    """The loader's early check of the face files must not leave them in VRAM that ComfyUI does not count
    (with face_device auto, Face Encode loads them onto the GPU when it runs and frees them after)."""
    import echovideo.face as face

    fn = comfy_env.pack_module("nodes.face_nodes")
    calls = []
    monkeypatch.setattr(face, "load_face_models", lambda paths, device: calls.append(("load", device)) or "models")
    monkeypatch.setattr(face, "release_face_models", lambda models=None: calls.append(("release", models)))
    monkeypatch.setattr(fn.bridge, "torch_device", lambda: torch.device("cuda", 0))
    comfy_env.run_node(fn.FaceEncoderLoader, siglip_name="siglip_tiny.safetensors", face_device="auto")
    assert calls == [("load", "cuda:0"), ("release", "models")]
    calls.clear()
    comfy_env.run_node(fn.FaceEncoderLoader, siglip_name="siglip_tiny.safetensors", face_device="cpu")
    assert calls == [("load", "cpu")]  # kept loaded on the CPU, as the widget says


def test_face_models_missing_is_clear(env, monkeypatch, tmp_path):
    import folder_paths

    fn = comfy_env.pack_module("nodes.face_nodes")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "insightface", ([str(tmp_path / "nowhere")], set()))
    with pytest.raises(FileNotFoundError, match=r"antelopev2.*nowhere.*README"):
        comfy_env.run_node(fn.FaceEncoderLoader, siglip_name="siglip_tiny.safetensors", face_device="cpu")


def test_a_fresh_install_hears_of_every_missing_model_at_once(env, monkeypatch, tmp_path):
    import folder_paths

    fn = comfy_env.pack_module("nodes.face_nodes")
    mn = comfy_env.pack_module("nodes.model_nodes")
    # every model present (the env fixture): a wrong name says only that
    with pytest.raises(FileNotFoundError) as e:
        comfy_env.run_node(mn.ModelLoader, model_name="missing.safetensors")
    assert "Also missing" not in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    for name in ("diffusion_models", "vae", "text_encoders", "clip_vision", "insightface", "facexlib"):
        monkeypatch.setitem(folder_paths.folder_names_and_paths, name, ([str(empty)], {".safetensors", ".pth"}))
        folder_paths.filename_list_cache.pop(name, None)
    with pytest.raises(FileNotFoundError) as e:
        comfy_env.run_node(mn.ModelLoader, model_name="(no model in models/diffusion_models)")
    msg = str(e.value)
    assert msg.startswith("EchoVideo: model '(none selected)' not found in the 'diffusion_models' folders")
    assert "Also missing" in msg, msg
    also = msg.split("Also missing", 1)[1]
    for needed in ("models/vae", "models/text_encoders", "models/clip_vision", "models/insightface/models/antelopev2",
                   "models/facexlib"):
        assert needed in also, (needed, msg)
    assert "diffusion_models" not in also  # the loader's own folder is named once, in front
    with pytest.raises(FileNotFoundError) as e:
        comfy_env.run_node(fn.FaceEncoderLoader, siglip_name="(no SigLIP in models/clip_vision)", face_device="cpu")
    msg = str(e.value)
    assert "Also missing" in msg, msg
    assert "antelopev2" in msg.split("Also missing")[0] and "facexlib files" in msg.split("Also missing")[0]
    also = msg.split("Also missing", 1)[1]
    assert "models/diffusion_models" in also and "models/clip_vision" in also and "insightface" not in also


def test_loaders_refuse_missing_models_and_unknown_options_at_queue_time(env, monkeypatch, tmp_path):
    """ComfyUI 0.3.x checks V1 combo values only: the loaders' validate_inputs refuse a missing model or an
    unknown option before any node runs, with the run-time message; a linked input (None) is left to run time."""
    import folder_paths

    mn = comfy_env.pack_module("nodes.model_nodes")
    tn = comfy_env.pack_module("nodes.text_nodes")
    fn = comfy_env.pack_module("nodes.face_nodes")
    sp = comfy_env.pack_module("nodes.speed_nodes")
    good = [(mn.ModelLoader, dict(model_name="echo_tiny.safetensors", weight_dtype="fp8_e4m3fn", attention="sdpa")),
            (mn.VaeLoader, dict(vae_name="vae_tiny.safetensors", precision="bf16")),
            (tn.T5Loader, dict(t5_name="t5_tiny.safetensors", precision="fp32")),
            (fn.FaceEncoderLoader, dict(siglip_name="siglip_tiny.safetensors", face_device="cpu")),
            (sp.CompileSettingsNode, dict(backend="eager", mode="reduce-overhead"))]
    for node, kw in good:
        assert node.validate_inputs(**kw) is True, node
        assert node.validate_inputs(**{k: None for k in kw}) is True, node  # linked
    for node, name, folder in ((mn.ModelLoader, "model_name", "diffusion_models"), (mn.VaeLoader, "vae_name", "vae"),
                               (tn.T5Loader, "t5_name", "text_encoders"),
                               (fn.FaceEncoderLoader, "siglip_name", "clip_vision")):
        msg = node.validate_inputs(**{name: "gone.safetensors"})
        assert f"model 'gone.safetensors' not found in the '{folder}' folders; searched: " in msg, msg
        assert "README" in msg and "Also missing" not in msg, msg
        with pytest.raises(FileNotFoundError) as ran:  # the same words as at run time
            comfy_env.run_node(node, **{name: "gone.safetensors"})
        assert str(ran.value) == msg
    for node, name, value, want in (
            (mn.ModelLoader, "weight_dtype", "fp4", "EchoVideo Model Loader: weight_dtype: got 'fp4', needs one of: "
                                                    "default, bf16, fp16, fp32, fp8_e4m3fn, fp8_e5m2"),
            (mn.ModelLoader, "attention", "flash9", "EchoVideo Model Loader: attention: got 'flash9', needs one of"),
            (mn.VaeLoader, "precision", "fp64", "EchoVideo VAE Loader: precision: got 'fp64', needs one of: default"),
            (tn.T5Loader, "precision", "int8", "EchoVideo T5 Loader: precision: got 'int8'"),
            (fn.FaceEncoderLoader, "face_device", "cuda", "EchoVideo Face Encoder Loader: face_device: got 'cuda', "
                                                          "needs one of: auto, cpu"),
            (sp.CompileSettingsNode, "backend", "nope", "EchoVideo Compile Settings: backend: got 'nope'")):
        msg = node.validate_inputs(**{name: value})
        assert isinstance(msg, str) and msg.startswith(want), msg
    both = mn.ModelLoader.validate_inputs(model_name="gone.safetensors", weight_dtype="fp4", attention="sdpa")
    assert "gone.safetensors" in both and "weight_dtype: got 'fp4'" in both  # every problem at once
    # the placeholder of an empty folder is refused too, and face models missing are named once
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "insightface", ([str(tmp_path / "nowhere")], set()))
    msg = fn.FaceEncoderLoader.validate_inputs(siglip_name="siglip_tiny.safetensors", face_device="cpu")
    assert "antelopev2" in msg and "nowhere" in msg and "clip_vision" not in msg, msg
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "vae", ([str(empty)], {".safetensors"}))
    folder_paths.filename_list_cache.pop("vae", None)
    placeholder = mn.VaeLoader.define_schema().inputs[0].options[0]
    assert placeholder == "(no VAE in models/vae)"
    assert "model '(none selected)' not found in the 'vae' folders" in mn.VaeLoader.validate_inputs(vae_name=placeholder)

    # packages not installed (a failed install) are named with the pip command at queue time, before any load
    import sys

    def uninstall(*names):  # `import name` fails as if not installed
        for name in names:
            monkeypatch.setitem(sys.modules, name, None)

    def no_cv2():
        raise ModuleNotFoundError("No module named 'cv2'", name="cv2")

    install = "install the pack's requirements into ComfyUI's Python: python -m pip install -r "
    uninstall("insightface", "facexlib")  # imported only when the models load: found without importing
    msg = fn.FaceEncoderLoader.validate_inputs(siglip_name="siglip_tiny.safetensors", face_device="cpu")
    assert msg.startswith("EchoVideo Face Encoder Loader: the face pipeline needs the Python packages insightface, "
                          f"facexlib, which are not installed; {install}"), msg
    uninstall("cv2")
    monkeypatch.setattr(comfy_env.pack_module("nodes.bridge"), "face_model_dirs", no_cv2)
    msg = fn.FaceEncoderLoader.validate_inputs(siglip_name="siglip_tiny.safetensors", face_device="cpu")
    assert msg.startswith("EchoVideo Face Encoder Loader: the face pipeline needs the Python package opencv-python, "
                          f"which is not installed; {install}"), msg
    uninstall("diffusers")
    msg = mn.VaeLoader.validate_inputs(vae_name=placeholder)
    assert msg.startswith("EchoVideo VAE Loader: the VAE needs the Python package diffusers, which is not installed; "
                          + install), msg


def test_text_width_mismatch_is_clear(env):
    from types import SimpleNamespace

    fn = comfy_env.pack_module("nodes.face_nodes")
    mn = comfy_env.pack_module("nodes.model_nodes")
    (model,) = comfy_env.run_node(mn.ModelLoader, model_name="echo_tiny.safetensors")
    text = SimpleNamespace(positive=torch.zeros(1, 226, 4096), negative=torch.zeros(1, 226, 4096))
    with pytest.raises(ValueError, match="text embeddings are .*226, 4096.*needs \\[1, 226, 16\\]"):
        comfy_env.run_node(fn.IITFFusion, model=model, text=text, identity=None)


def test_face_tokens_of_another_siglip_are_clear(env):
    """A SigLIP of another size (e.g. a 384-pixel one) makes other face tokens: IITF Fusion names the input and
    the SigLIP to pick, before any work."""
    from types import SimpleNamespace

    fn = comfy_env.pack_module("nodes.face_nodes")
    mn = comfy_env.pack_module("nodes.model_nodes")
    (model,) = comfy_env.run_node(mn.ModelLoader, model_name="echo_tiny.safetensors")
    c = model.config
    text = SimpleNamespace(positive=torch.zeros(1, c.max_text_seq_length, c.text_embed_dim),
                           negative=torch.zeros(1, c.max_text_seq_length, c.text_embed_dim))
    identity = SimpleNamespace(face_tokens=torch.zeros(1, c.face_seq_length * 4, c.face_embed_dim), extra={},
                               id_embedding=torch.zeros(1, 512))
    with pytest.raises(ValueError, match=r"^EchoVideo IITF Fusion: identity's SigLIP face tokens are \(1, %d, %d\), "
                                         r"the model needs \[1, %d, %d\]: pick siglip-base-patch16-224"
                                         % (c.face_seq_length * 4, c.face_embed_dim, c.face_seq_length, c.face_embed_dim)):
        comfy_env.run_node(fn.IITFFusion, model=model, text=text, identity=identity)


def test_gpu_face_models_freed_after_face_encode(env, monkeypatch):
    """Face models on a GPU sit outside ComfyUI's memory accounting: Face Encode frees them after use (CPU ones
    stay cached). Simulated on the CPU: the bundle says cuda, the loaded set is the CPU one."""
    import dataclasses

    from echovideo import face as face_lib

    fn = comfy_env.pack_module("nodes.face_nodes")
    (enc,) = comfy_env.run_node(fn.FaceEncoderLoader, siglip_name="siglip_tiny.safetensors", face_device="cpu")
    paths, _ = enc.face_models
    comfy_env.run_node(fn.FaceEncode, face_encoder=enc, image=photo(0))
    cpu_set = face_lib.load_face_models(paths, "cpu")
    comfy_env.run_node(fn.FaceEncode, face_encoder=enc, image=photo(0))
    assert face_lib.load_face_models(paths, "cpu") is cpu_set  # CPU: kept

    requested, load = [], face_lib.load_face_models

    def load_as_if_on_gpu(p, device):
        requested.append(device)
        return load(p, "cpu")

    monkeypatch.setattr(face_lib, "load_face_models", load_as_if_on_gpu)
    import comfy.model_management as mm

    room = []  # managed models are unloaded first until the face models fit beside ComfyUI's work reserve
    monkeypatch.setattr(mm, "free_memory", lambda need, device, keep_loaded=[]: room.append((need, str(device))))
    gpu = dataclasses.replace(enc, face_models=(paths, "cuda:0"))
    ident, _, _ = comfy_env.run_node(fn.FaceEncode, face_encoder=gpu, image=photo(0))
    assert requested == ["cuda:0"] and ident.id_embedding.shape == (1, 512)
    files = sum(os.path.getsize(f) for f in paths.files)
    assert len(paths.files) == 4 and files > 0
    assert room == [(2 * files + mm.minimum_inference_memory(), "cuda:0")]
    monkeypatch.undo()
    assert face_lib.load_face_models(paths, "cpu") is not cpu_set  # freed after use, loaded again
