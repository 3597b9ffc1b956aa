#!/usr/bin/env python3
"""Regenerate workflows/*.json (UI format) and their tiny API twins in tests/workflows/ from one graph list.

  python tests/workflows/build_workflows.py [OBJECT_INFO.json]

OBJECT_INFO.json: /object_info of a ComfyUI with the pack loaded (curl http://127.0.0.1:8188/object_info);
without it the specs come from a ComfyUI at COMFYUI_DIR, in-process (tests/workflows/nodeinfo.py).
Also writes tests/workflows/node_info_snapshot.json (the used nodes' specs, for checks without ComfyUI).
"""
import json
import os
import sys
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))
from make_tiny_models import NAMES, PHOTO  # noqa: E402

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
POSITIVE = ("A young man with short hair smiles and talks to the camera in a sunny park, trees swaying "
            "behind him, natural light, high detail.")

# model names: released layout renamed into ComfyUI folders (README model table)
REAL = dict(model="EchoVideo", vae="CogVideoX-5b-vae", t5="EchoVideo-t5-v1_1-xxl", siglip="siglip-base-patch16-224",
            upscale="RealESRGAN_x2plus.pth")
FULL = dict(width=848, height=480, frames=49, steps=50, prefix="video/EchoVideo")
TINY = dict(width=64, height=64, frames=9, steps=2, prefix="video/echovideo_tiny")

NOTE = """## EchoVideo: {title}

One photo of a person + a prompt -> a {frames}-frame video ({width} x {height}, 16 fps as the published demo).
Pick your photo in **Load Image** (the graph names echovideo_example_photo.png, which only the tiny demo makes).

**Models** (see the README model table):
- `models/diffusion_models/EchoVideo/`: the released `transformer/` folder (config.json, 2 shards, index)
- `models/vae/CogVideoX-5b-vae/`: CogVideoX-5B `vae/` (config.json + diffusion_pytorch_model.safetensors)
- `models/text_encoders/EchoVideo-t5-v1_1-xxl/`: the released `text_encoder/` folder with the released
  `tokenizer/` folder copied inside as `tokenizer/`
- `models/clip_vision/siglip-base-patch16-224/`: google/siglip-base-patch16-224
- `models/insightface/models/antelopev2/` (scrfd_10g_bnkps.onnx, glintr100.onnx) and `models/facexlib/`
  (detection_Resnet50_Final.pth, parsing_bisenet.pth): found automatically, no widget
{extra}
**Text encoder**: this graph uses the EchoVideo T5 Loader (the released T5 + tokenizer). Instead you can
load `t5xxl_fp16.safetensors` with the core **Load CLIP** node (type `sd3`) and connect it to Text Encode's
`clip` input (disconnect `t5`).

Settings as the reference: 49 frames, 50 steps, cfg 6 with dynamic cfg, seed 42 for the first run (the
Sampler's seed is then randomized after each run, for a new take; set it to `fixed` to repeat one).
Width/height: multiples of 16; frames: 8k+1 (9, 17, 25, 33, 41, 49).
"""
UPSCALE_NOTE = ("- `models/upscale_models/RealESRGAN_x2plus.pth` (or any ESRGAN-type upscaler; pick it in "
                "Load Upscale Model). 2x gives 1696 x 960 frames; a 4x model gives 3392 x 1920, about 3.8 GB "
                "of frames in RAM at 49 frames\n")


def graph(kind, sizes, names, photo):
    """[(id, type, widgets dict, {input: (src_id, slot)}, pos, size, title)] for one workflow."""
    whole = kind == "fullbody"
    g = [
        (2, "LoadImage", {"image": photo}, {}, (20, 420), (320, 360)),
        (3, "EchoVideoFaceEncoderLoader", {"siglip_name": names["siglip"], "face_device": "auto"}, {},
         (20, 240), (320, 90)),
        (4, "EchoVideoFaceEncode", {"face_index": 0, "whole_image": whole, "average_embeddings": False},
         {"face_encoder": (3, 0), "image": (2, 0)}, (380, 360), (300, 150)),
        (5, "EchoVideoT5Loader", {"t5_name": names["t5"], "precision": "default"}, {}, (20, 20), (320, 90)),
        (6, "EchoVideoTextEncode", {"positive": POSITIVE, "negative": ""}, {"t5": (5, 0)}, (380, 20), (360, 250)),
        (7, "EchoVideoModelLoader", {"model_name": names["model"], "weight_dtype": "default", "attention": "sdpa"},
         {}, (380, 580), (320, 120)),
        (8, "EchoVideoVAELoader", {"vae_name": names["vae"], "precision": "default"}, {}, (380, 760), (320, 90)),
        (9, "EchoVideoIITFFusion", {}, {"model": (7, 0), "text": (6, 0), "identity": (4, 0)}, (780, 20), (260, 70)),
        (10, "EchoVideoFaceFrameEncode", {"width": sizes["width"], "height": sizes["height"],
                                          "num_frames": sizes["frames"]},
         {"vae": (8, 0), "image": (4, 1)}, (780, 420), (280, 130)),
        (11, "EchoVideoSampler", {"steps": sizes["steps"], "cfg": 6.0, "dynamic_cfg": True, "seed": 42},
         {"model": (7, 0), "conditioning": (9, 0), "image_latents": (10, 0)}, (1100, 20), (300, 520)),  # room for the live preview
        (12, "EchoVideoVAEDecode", {"tiling": True, "tile_size": 0}, {"vae": (8, 0), "latent": (11, 0)},
         (1100, 580), (280, 100)),
        (15, "PreviewImage", {}, {"images": (4, 2)}, (780, 640), (260, 260)),
    ]
    frames_src = (12, 0)
    if kind == "upscale":
        g += [(16, "UpscaleModelLoader", {"model_name": names["upscale"]}, {}, (1100, 720), (300, 60)),
              (17, "ImageUpscaleWithModel", {}, {"upscale_model": (16, 0), "image": (12, 0)}, (1420, 580),
               (240, 50))]
        frames_src = (17, 0)
    g += [(13, "CreateVideo", {"fps": 16.0}, {"images": frames_src}, (1700 if kind == "upscale" else 1420, 20),
           (270, 80)),
          (14, "SaveVideo", {"filename_prefix": f"{sizes['prefix']}_{kind}", "format": "auto", "codec": "auto"},
           {"video": (13, 0)}, (1700 if kind == "upscale" else 1420, 140), (400, 420))]
    return g


def spec_of(info, name):
    for sect in ("required", "optional"):
        if name in info["input"].get(sect, {}):
            return info["input"][sect][name], sect == "optional"
    raise KeyError(name)


def is_widget(spec):
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def ui_workflow(kind, title, oi):
    g = graph(kind, FULL, REAL, "echovideo_example_photo.png")
    link_id, links, nodes = 0, [], []
    outs = {}  # (node, slot) -> [link ids]
    for nid, typ, widgets, ins, pos, size in g:
        info = oi[typ]
        inputs, values = [], []
        order = info["input_order"].get("required", []) + info["input_order"].get("optional", [])
        for name in order:
            spec, optional = spec_of(info, name)
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if is_widget(spec):
                values.append(widgets[name] if name in widgets else opts.get("default"))
                if opts.get("control_after_generate"):
                    values.append("randomize")  # the first run keeps the seed shown; then new takes
                if opts.get("image_upload"):
                    values.append("image")
                continue
            if name not in ins and optional and spec[0].startswith("ECHOVIDEO_"):
                continue  # unlinked optional sockets: the editor adds them
            slot = {"name": name, "type": spec[0], "link": None}
            if optional:
                slot["shape"] = 7
            if name in ins:
                link_id += 1
                src, s = ins[name]
                links.append([link_id, src, s, nid, len(inputs), spec[0]])
                outs.setdefault((src, s), []).append(link_id)
                slot["link"] = link_id
            inputs.append(slot)
        nodes.append(dict(id=nid, type=typ, pos=list(pos), size=list(size), flags={}, order=0, mode=0,
                          inputs=inputs, outputs=[], properties={"Node name for S&R": typ},
                          widgets_values=values))
    for n in nodes:
        info = oi[n["type"]]
        n["outputs"] = [{"name": nm, "type": t, "slot_index": i, "links": outs.get((n["id"], i)) or None}
                        for i, (t, nm) in enumerate(zip(info["output"], info["output_name"]))]
    extra = UPSCALE_NOTE if kind == "upscale" else ""
    note = dict(id=1, type="MarkdownNote", pos=[-420, 20], size=[400, 620], flags={}, order=0, mode=0,
                inputs=[], outputs=[], title="Read me: models and settings", properties={},
                widgets_values=[NOTE.format(title=title, extra=extra, **FULL)])
    nodes = [note] + nodes
    # execution order for the editor: loaders first (topological by links)
    deps = {n["id"]: {l[1] for l in links if l[3] == n["id"]} for n in nodes}
    done, order = set(), []
    while len(order) < len(nodes):
        for n in sorted(deps):
            if n not in done and deps[n] <= done:
                done.add(n); order.append(n)
    for n in nodes:
        n["order"] = order.index(n["id"])
    return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, "comfyui-echovideo/" + kind)), "revision": 0, "last_node_id": max(n["id"] for n in nodes),
            "last_link_id": link_id, "nodes": nodes, "links": links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 0.62 if kind == "upscale" else 0.68, "offset": [450, 40]}}, "version": 0.4}


def api_twin(kind, oi):
    tiny = dict(NAMES, t5=NAMES["t5"], upscale=NAMES["upscale"])
    g = graph(kind, TINY, tiny, PHOTO)
    out = {}
    for nid, typ, widgets, ins, _, _ in g:
        inputs = dict(widgets)
        if typ == "EchoVideoSampler":
            inputs["seed"] = 7
        for name, (src, s) in ins.items():
            inputs[name] = [str(src), s]
        out[str(nid)] = {"class_type": typ, "inputs": inputs}
    return out


KINDS = [("faceid", "echovideo_faceid_t2v", "face-ID text-to-video"),
         ("fullbody", "echovideo_fullbody_t2v", "full-body identity (whole photo as reference)"),
         ("upscale", "echovideo_upscale_save", "face-ID video, upscaled, saved as MP4")]


def main():
    if len(sys.argv) > 1:
        with open(sys.argv[1]) as f:
            oi = json.load(f)
    else:
        sys.path.insert(0, HERE)
        import nodeinfo

        oi = nodeinfo.live_node_info()
    used = set()
    for kind, name, title in KINDS:
        ui = ui_workflow(kind, title, oi)
        used |= {n["type"] for n in ui["nodes"]}
        with open(os.path.join(REPO, "workflows", name + ".json"), "w") as f:
            json.dump(ui, f, indent=1)
            f.write("\n")
        with open(os.path.join(HERE, name + "_tiny_api.json"), "w") as f:
            json.dump(api_twin(kind, oi), f, indent=1)
            f.write("\n")
    keep = ("input", "input_order", "output", "output_name", "python_module")
    import nodeinfo

    snap = {t: {k: oi[t][k] for k in keep if k in oi[t]} for t in sorted(used | set(nodeinfo.PACK_NODES)) if t in oi}
    with open(os.path.join(HERE, "node_info_snapshot.json"), "w") as f:
        json.dump(snap, f, indent=1, sort_keys=True)
        f.write("\n")
    print("wrote", len(KINDS), "workflows, twins and the snapshot of", len(snap), "node types")


if __name__ == "__main__":
    main()
