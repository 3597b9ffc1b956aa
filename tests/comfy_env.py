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


# tiny models: tests/make_tiny_models.py (plain script, no pytest/ComfyUI)
from make_tiny_models import TINY, write_diffusers_folder, write_tiny_models  # noqa: E402,F401
