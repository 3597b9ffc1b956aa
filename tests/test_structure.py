"""Static checks of the source tree (no ComfyUI needed)."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

IMPORT_RE = r"^\s*(from|import)\s+(comfy\b|comfy_api\b|comfy_extras\b|folder_paths\b|latent_preview\b|nodes\b|server\b|execution\b)"


def test_only_bridge_imports_comfyui():
    """echovideo/ never imports ComfyUI; in nodes/ only bridge.py does (runs without ComfyUI)."""
    offenders = []
    for top, allowed in (("echovideo", ()), ("nodes", ("bridge.py",)), (".", ())):
        base = os.path.join(ROOT, top)
        walk = [(base, [], [f for f in os.listdir(base) if f.endswith(".py")])] if top == "." else os.walk(base)
        for root, _, files in walk:
            for f in files:
                if not f.endswith(".py") or f in allowed:
                    continue
                path = os.path.join(root, f)
                for n, line in enumerate(open(path, encoding="utf-8"), 1):
                    if re.match(IMPORT_RE, line):
                        offenders.append(f"{os.path.relpath(path, ROOT)}:{n}: {line.strip()}")
    assert not offenders, offenders
