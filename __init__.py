"""ComfyUI-EchoVideo: identity-preserving text-to-video (EchoVideo: CogVideoX-5B + IITF) as ComfyUI nodes."""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
# the model library is the top-level package `echovideo` beside this file
if _HERE not in sys.path:
    sys.path.append(_HERE)


def _other_library():
    """The folder of the `echovideo` library Python imports when it is not this pack's (another copy of the pack
    in custom_nodes, loaded first, or an unrelated package), else None."""
    import importlib.util

    spec = importlib.util.find_spec("echovideo")
    origin = spec.origin if spec is not None else None
    own = os.path.join(_HERE, "echovideo", "__init__.py")
    if origin and os.path.normcase(os.path.realpath(origin)) != os.path.normcase(os.path.realpath(own)):
        return os.path.dirname(os.path.dirname(origin))
    return None


_other = _other_library()
if _other is not None:  # this copy's nodes would run the other copy's library: register none of them
    bridge = None
    import logging

    logging.getLogger("EchoVideo").warning(
        "ComfyUI-EchoVideo in %s is not loaded: Python's `echovideo` library is the one in %s (another copy of "
        "this pack, loaded first?). Keep one copy of ComfyUI-EchoVideo in custom_nodes and restart ComfyUI.",
        _HERE, _other)
else:
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

__all__ = ["comfy_entrypoint"] if bridge is not None else []
