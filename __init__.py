"""ComfyUI-EchoVideo: identity-preserving text-to-video (EchoVideo: CogVideoX-5B + IITF) as ComfyUI nodes."""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
# the model library is the top-level package `echovideo` beside this file
if _HERE not in sys.path:
    sys.path.append(_HERE)

try:
    from .nodes import bridge
except ImportError as error:  # outside ComfyUI (e.g. a test collector); inside it, a ComfyUI without the V3 API
    bridge = None
    if "comfy" in sys.modules:
        import logging

        logging.getLogger("EchoVideo").warning(
            "ComfyUI-EchoVideo is not loaded: %s. It needs ComfyUI 0.3.64 or newer (comfy_api.latest).", error)

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
