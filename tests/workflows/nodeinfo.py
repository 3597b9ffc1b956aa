"""Node specs (the /object_info shape) for the workflow checks: from the real classes when ComfyUI is
present (comfy_env), else from node_info_snapshot.json (written by build_workflows.py)."""
import asyncio
import importlib
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
SNAPSHOT = os.path.join(HERE, "node_info_snapshot.json")

PACK_NODES = ["EchoVideoT5Loader", "EchoVideoTextEncode", "EchoVideoModelLoader", "EchoVideoVAELoader",
              "EchoVideoFaceEncoderLoader", "EchoVideoFaceEncode", "EchoVideoIITFFusion",
              "EchoVideoFaceFrameEncode", "EchoVideoSampler", "EchoVideoVAEDecode", "EchoVideoCompileSettings",
              "EchoVideoStepCache"]
# core node ids the workflows may use -> the ComfyUI module that defines them (0.3.64)
CORE_NODES = {"LoadImage": "nodes", "PreviewImage": "nodes", "ImageScaleBy": "nodes", "CLIPLoader": "nodes",
              "CreateVideo": "comfy_extras.nodes_video", "SaveVideo": "comfy_extras.nodes_video",
              "UpscaleModelLoader": "comfy_extras.nodes_upscale_model",
              "ImageUpscaleWithModel": "comfy_extras.nodes_upscale_model"}
FRONTEND_ONLY = {"MarkdownNote", "Note", "Reroute"}


def info_of(cls, node_id):
    if hasattr(cls, "GET_NODE_INFO_V1"):  # V3 node
        return cls.GET_NODE_INFO_V1()
    inp = cls.INPUT_TYPES()
    return {"input": inp, "input_order": {k: list(v) for k, v in inp.items()}, "output": list(cls.RETURN_TYPES),
            "output_name": list(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES),
            "python_module": getattr(cls, "RELATIVE_PYTHON_MODULE", "nodes")}


def _module_classes(mod):
    if hasattr(mod, "NODE_CLASS_MAPPINGS"):
        return dict(mod.NODE_CLASS_MAPPINGS)
    ext = asyncio.run(mod.comfy_entrypoint())
    return {c.GET_SCHEMA().node_id: c for c in asyncio.run(ext.get_node_list())}


def live_node_info():
    """{node_id: info} for the pack's nodes and CORE_NODES, from a real ComfyUI (in-process)."""
    import comfy_env

    pack = comfy_env.load_pack()
    ext = asyncio.run(pack.comfy_entrypoint())
    out = {}
    for cls in asyncio.run(ext.get_node_list()):
        nid = cls.GET_SCHEMA().node_id
        out[nid] = info_of(cls, nid)
    by_mod = {}
    for nid, modname in CORE_NODES.items():
        if modname not in by_mod:  # modules that import `server` clash with other `utils` in-process: avoided
            by_mod[modname] = _module_classes(importlib.import_module(modname))
        if nid in by_mod[modname]:
            out[nid] = info_of(by_mod[modname][nid], nid)
    return out


def snapshot_node_info():
    with open(SNAPSHOT) as f:
        return json.load(f)
