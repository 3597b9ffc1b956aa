"""ComfyUI-EchoVideo: identity-preserving text-to-video (EchoVideo: CogVideoX-5B + IITF) as ComfyUI nodes."""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
# the model library is the top-level package `echovideo` beside this file
if _HERE not in sys.path:
    sys.path.append(_HERE)

try:
    from .nodes import bridge
except ImportError:  # imported outside ComfyUI (e.g. by a test collector)
    bridge = None

if bridge is not None:
    from .nodes import node_list

    class EchoVideoExtension(bridge.ComfyExtension):
        async def on_load(self) -> None:
            bridge.setup()

        async def get_node_list(self):
            bridge.setup()  # folders must exist before schemas list model files
            return node_list()

    async def comfy_entrypoint():
        return EchoVideoExtension()

__all__ = ["comfy_entrypoint"]
