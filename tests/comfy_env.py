"""Helpers for tests that need a real ComfyUI in-process (marked `comfyui`).

COMFYUI_DIR (default ~/comfy/ComfyUI) must hold a ComfyUI checkout; tests skip with the fix otherwise.
"""
import importlib.util
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMFYUI_DIR = os.path.abspath(os.path.expanduser(os.environ.get("COMFYUI_DIR", "~/comfy/ComfyUI")))
PACK_NAME = "comfyui_echovideo_pack"

SKIP_REASON = (f"needs a real ComfyUI at COMFYUI_DIR={COMFYUI_DIR} (not found). Enable: set COMFYUI_DIR to a "
               "ComfyUI checkout, or lay one out with `/work/shared/tools/comfyui-from-snapshot "
               "<ComfyUI git dir>` (installs its requirements into the active venv).")


def available() -> bool:
    return os.path.isfile(os.path.join(COMFYUI_DIR, "comfy", "model_management.py"))


requires_comfyui = [pytest.mark.comfyui, pytest.mark.skipif(not available(), reason=SKIP_REASON)]


def setup_comfy():
    """Put ComfyUI first on sys.path (its `nodes`, `utils` win), CPU mode without CUDA; returns model_management."""
    if not available():
        pytest.skip(SKIP_REASON)
    if sys.path[0] != COMFYUI_DIR:
        if COMFYUI_DIR in sys.path:
            sys.path.remove(COMFYUI_DIR)
        sys.path.insert(0, COMFYUI_DIR)
    import torch
    from comfy.cli_args import args

    if not torch.cuda.is_available():
        args.cpu = True
    import comfy.model_management as mm

    return mm


def load_pack():
    """Import the pack the way ComfyUI does (package from __init__.py), and run its setup."""
    setup_comfy()
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(PACK_NAME, os.path.join(REPO, "__init__.py"),
                                                  submodule_search_locations=[REPO])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = mod
    spec.loader.exec_module(mod)
    mod.bridge.setup()
    return mod


def pack_module(name: str):
    load_pack()
    return importlib.import_module(f"{PACK_NAME}.{name}")


def run_node(cls, **inputs):
    """Execute a V3 node the way ComfyUI's executor does; returns the output tuple."""
    out = cls.EXECUTE_NORMALIZED(**inputs)
    return out.args


TINY = dict(text_dim=16, width=64, height=64, frames=9, steps=2)


def write_tiny_models(root) -> dict:
    """Tiny random models of every kind the nodes load, in ComfyUI's folder layout under `root`:
    diffusion_models/echo_tiny.safetensors, vae/vae_tiny.safetensors, clip_vision/siglip_tiny.safetensors,
    text_encoders/t5_tiny.safetensors, insightface/models/antelopev2/*, facexlib/*. No ComfyUI needed."""
    import json

    import torch
    import transformers
    from safetensors.torch import save_file

    from echovideo import tiny
    from echovideo.checkpoint import save_single_file
    from face_fixtures import write_tiny_face_models

    root = os.fspath(root)
    p = tiny.Preset(2, 2, 16, 4, TINY["text_dim"], 226, TINY["frames"], TINY["height"], TINY["width"],
                    TINY["steps"], 6.0)
    for d in ("diffusion_models", "vae", "clip_vision", "text_encoders"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    save_single_file(tiny.tiny_dit(p), tiny.dit_config(p), os.path.join(root, "diffusion_models", "echo_tiny.safetensors"))
    vae = tiny.tiny_vae(p)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, os.path.join(root, "vae", "vae_tiny.safetensors"),
              metadata={"config": json.dumps(tiny.vae_config(p))})
    sig = tiny.tiny_siglip(p)
    save_file({(k if k.startswith("vision_model.") else "vision_model." + k): v.contiguous()
               for k, v in sig.state_dict().items()},
              os.path.join(root, "clip_vision", "siglip_tiny.safetensors"),
              metadata={"config": json.dumps(tiny.siglip_config(p))})
    torch.manual_seed(0)
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=32128, d_model=TINY["text_dim"], d_kv=4, d_ff=32, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)).eval()
    save_file({k: v.contiguous() for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"},
              os.path.join(root, "text_encoders", "t5_tiny.safetensors"),
              metadata={"config": json.dumps(t5.config.to_dict())})
    face = write_tiny_face_models(root)
    return dict(root=root, preset=p, face=face)
