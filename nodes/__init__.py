"""ComfyUI nodes for EchoVideo. Thin: all math lives in echovideo/, all ComfyUI access in bridge.py."""
import logging

log = logging.getLogger("EchoVideo")


def node_list() -> list:
    """Every node class; a module whose imports fail is skipped with a warning, not the whole pack."""
    import importlib

    nodes = []
    for mod in ("text_nodes", "model_nodes", "face_nodes", "sampling_nodes", "speed_nodes"):
        try:
            m = importlib.import_module(f"{__name__}.{mod}")
        except ImportError as e:
            log.warning("EchoVideo: nodes in %s unavailable: %s", mod, e)
            continue
        nodes += m.NODES
    return nodes
