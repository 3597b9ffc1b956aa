"""The whole node chain in a real ComfyUI (in-process) on tiny random models equals echovideo.pipeline.generate."""
import json
import os

import numpy as np
import pytest
import torch

import comfy_env

pytestmark = comfy_env.requires_comfyui
transformers = pytest.importorskip("transformers")
from safetensors.torch import save_file  # noqa: E402

TEXT_DIM = 16
W, H, FRAMES, STEPS = 64, 64, 9, 2


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    comfy_env.setup_comfy()
    import folder_paths
    from echovideo import tiny
    from echovideo.checkpoint import save_single_file
    from face_fixtures import write_tiny_face_models

    root = tmp_path_factory.mktemp("models")
    p = tiny.Preset(2, 2, 16, 4, TEXT_DIM, 226, FRAMES, H, W, STEPS, 6.0)
    dit = tiny.tiny_dit(p)
    for d in ("diffusion_models", "vae", "clip_vision", "text_encoders"):
        (root / d).mkdir()
    save_single_file(dit, tiny.dit_config(p), str(root / "diffusion_models" / "echo_tiny.safetensors"))
    vae = tiny.tiny_vae(p)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(root / "vae" / "vae_tiny.safetensors"),
              metadata={"config": json.dumps(tiny.vae_config(p))})
    sig = tiny.tiny_siglip(p)
    save_file({"vision_model." + k if not k.startswith("vision_model.") else k: v.contiguous()
               for k, v in sig.state_dict().items()},
              str(root / "clip_vision" / "siglip_tiny.safetensors"), metadata={"config": json.dumps(tiny.siglip_config(p))})
    torch.manual_seed(0)
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=32128, d_model=TEXT_DIM, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)).eval()
    save_file({k: v.contiguous() for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"},
              str(root / "text_encoders" / "t5_tiny.safetensors"), metadata={"config": json.dumps(t5.config.to_dict())})
    face = write_tiny_face_models(root)

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


def test_chain_equals_library_pipeline(env):
    from echovideo import pipeline
    unwrap = comfy_env.pack_module("nodes.bridge").unwrap

    out = run_chain()
    frames = out["frames"]
    assert frames.shape == (FRAMES, H, W, 3) and 0 <= frames.min() and frames.max() <= 1
    assert out["latent"]["samples"].shape == (1, 4, (FRAMES - 1) // 4 + 1, H // 8, W // 8)
    assert out["crops"].shape == (1, 512, 512, 3)

    ident = out["identity"]
    want = pipeline.generate(out["model"].model, out["vae"].vae, unwrap(out["enc"].siglip),
                             out["text"].positive, out["text"].negative, ident.face_crop.numpy(),
                             ident.id_embedding, W, H, FRAMES, steps=STEPS, guidance_scale=6.0, dynamic_cfg=True,
                             seed=7, tiling=False)
    torch.testing.assert_close(frames, want, rtol=1e-5, atol=1e-5)


def test_sampler_progress_and_interrupt(env, monkeypatch):
    import comfy.model_management as mm
    import comfy.utils

    calls = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda v, t, preview, node_id=None: calls.append((v, t, preview)))
    out = run_chain(cfg=1.0)
    steps = [c for c in calls if c[1] == STEPS]
    assert [c[0] for c in steps] == list(range(1, STEPS + 1))

    sn = comfy_env.pack_module("nodes.sampling_nodes")
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            comfy_env.run_node(sn.Sampler, model=out["model"], conditioning=out["cond"], image_latents=out["img_lat"],
                               steps=STEPS, cfg=6.0, dynamic_cfg=True, seed=1)
    finally:
        mm.interrupt_current_processing(False)
    assert out["model"].model.block_hook is None  # hook restored


def test_preview_image_from_latents():
    bridge = comfy_env.pack_module("nodes.bridge")
    img = bridge.latent_preview_image(torch.randn(1, 3, 16, 8, 10))
    assert img.size == (40, 32)


def test_bad_inputs_give_clear_errors(env):
    sn = comfy_env.pack_module("nodes.sampling_nodes")
    mn = comfy_env.pack_module("nodes.model_nodes")
    fn = comfy_env.pack_module("nodes.face_nodes")
    assert "4k+1" in sn.FaceFrameEncode.validate_inputs(width=64, height=64, num_frames=10)
    assert "multiple of 16" in sn.FaceFrameEncode.validate_inputs(width=70, height=64, num_frames=9)
    assert sn.FaceFrameEncode.validate_inputs(width=64, height=64, num_frames=9) is True
    with pytest.raises(FileNotFoundError, match="diffusion_models.*README"):
        comfy_env.run_node(mn.ModelLoader, model_name="missing.safetensors")
    # a VAE file given as the transformer
    import shutil

    shutil.copy(env["root"] / "vae" / "vae_tiny.safetensors", env["root"] / "diffusion_models" / "wrong.safetensors")
    with pytest.raises(ValueError, match="not an EchoVideo"):
        comfy_env.run_node(mn.ModelLoader, model_name="wrong.safetensors")
    with pytest.raises(ValueError, match="empty"):
        fn.image_to_uint8(torch.zeros(0, 64, 64, 3))
