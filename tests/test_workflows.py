"""Static checks of the example workflows (workflows/, UI format) and their tiny API twins
(tests/workflows/*_tiny_api.json). Node specs come from the real ComfyUI when present, else from
tests/workflows/node_info_snapshot.json. Regenerate both: python tests/workflows/build_workflows.py"""
import collections
import glob
import json
import os
import re
import sys

import pytest

import comfy_env
from make_tiny_models import NAMES, PHOTO

REPO = comfy_env.REPO
sys.path.insert(0, os.path.join(REPO, "tests", "workflows"))
import nodeinfo  # noqa: E402

EXAMPLES = sorted(glob.glob(os.path.join(REPO, "workflows", "*.json")))
TWIN_DIR = os.path.join(REPO, "tests", "workflows")
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
# combo inputs that name a file: checked against the model names, not the (machine-dependent) list
MODEL_INPUTS = {("EchoVideoModelLoader", "model_name"): "model", ("EchoVideoVAELoader", "vae_name"): "vae",
                ("EchoVideoT5Loader", "t5_name"): "t5", ("EchoVideoFaceEncoderLoader", "siglip_name"): "siglip",
                ("UpscaleModelLoader", "model_name"): "upscale", ("LoadImage", "image"): "photo",
                ("CLIPLoader", "clip_name"): "clip"}
# the names the README model table uses (released folders renamed into ComfyUI's model folders)
EXAMPLE_NAMES = dict(model="EchoVideo", vae="CogVideoX-5b-vae", t5="EchoVideo-t5-v1_1-xxl",
                     siglip="siglip-base-patch16-224", upscale="RealESRGAN_x2plus.pth", photo=PHOTO)
TWIN_NAMES = dict(NAMES, photo=PHOTO)
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


@pytest.fixture(scope="module")
def info():
    return nodeinfo.live_node_info() if comfy_env.available() else nodeinfo.snapshot_node_info()


def twin_of(example):
    return os.path.join(TWIN_DIR, os.path.basename(example)[:-5] + "_tiny_api.json")


def load(path):
    with open(path) as f:
        return json.load(f)


def specs(ninfo):
    """[(name, spec, optional)] in input order."""
    out = []
    for sect in ("required", "optional"):
        for name in ninfo.get("input_order", {}).get(sect, list(ninfo["input"].get(sect, {}))):
            out.append((name, ninfo["input"][sect][name], sect == "optional"))
    return out


def is_widget(spec):
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def opts_of(spec):
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def value_problem(node_type, name, spec, v, names):
    typ, opts = spec[0], opts_of(spec)
    where = f"{node_type}.{name}={v!r}"
    if isinstance(typ, list) or typ == "COMBO":
        if (node_type, name) in MODEL_INPUTS:
            want = names.get(MODEL_INPUTS[(node_type, name)])
            return None if want is None or v == want else f"{where}: model name should be {want!r}"
        options = typ if isinstance(typ, list) else opts.get("options", [])
        return None if v in options else f"{where}: not one of {options}"
    if typ == "INT" and (not isinstance(v, int) or isinstance(v, bool)):
        return f"{where}: not an int"
    if typ == "FLOAT" and (not isinstance(v, (int, float)) or isinstance(v, bool)):
        return f"{where}: not a number"
    if typ in ("INT", "FLOAT") and not opts.get("min", -float("inf")) <= v <= opts.get("max", float("inf")):
        return f"{where}: outside [{opts.get('min')}, {opts.get('max')}]"
    if typ == "BOOLEAN" and not isinstance(v, bool):
        return f"{where}: not a bool"
    if typ == "STRING" and not isinstance(v, str):
        return f"{where}: not a string"
    return None


def types_match(out_type, in_type):
    return out_type == in_type or "*" in (out_type, in_type) or \
        (isinstance(in_type, str) and out_type in in_type.split(","))


# ---------------------------------------------------------------- parsing both formats

def ui_widgets(node, ninfo):
    """{widget name: value} from a UI node's widgets_values; raises AssertionError on a count mismatch."""
    vals, out, i = list(node.get("widgets_values") or []), {}, 0
    for name, spec, _ in specs(ninfo):
        if not is_widget(spec):
            continue
        assert i < len(vals), f"node {node['id']} ({node['type']}): too few widgets_values ({len(vals)})"
        out[name] = vals[i]
        i += 1
        if opts_of(spec).get("control_after_generate"):
            assert vals[i] in CONTROL_VALUES, f"node {node['id']}: {vals[i]!r} after {name} is no control mode"
            i += 1
        if any(k.endswith("upload") for k in opts_of(spec)):
            assert vals[i] == "image", f"node {node['id']}: upload widget value {vals[i]!r}"
            i += 1
    assert i == len(vals), f"node {node['id']} ({node['type']}): {len(vals)} widgets_values, used {i}"
    return out


def ui_graph(wf):
    """(nodes {id: (type, widgets)}, edges [(src, slot, dst, input name)]) of a UI workflow."""
    nodes = {n["id"]: n for n in wf["nodes"]}
    edges = []
    for lid, src, sslot, dst, dslot, _ in wf["links"]:
        edges.append((src, sslot, dst, nodes[dst]["inputs"][dslot]["name"]))
    return nodes, edges


def api_edges(wf):
    return [(int(src), slot, int(nid), name) for nid, n in wf.items() for name, v in n["inputs"].items()
            if isinstance(v, list) for src, slot in [v]]


def shape(types, edges):
    """Node-type graph: multiset of node types and of typed edges."""
    return (collections.Counter(t for t in types.values() if t not in nodeinfo.FRONTEND_ONLY),
            collections.Counter((types[s], ss, types[d], name) for s, ss, d, name in edges))


def api_values(wf, node_type):
    return [n["inputs"] for n in wf.values() if n["class_type"] == node_type]


def ui_values(wf, info, node_type):
    return [ui_widgets(n, info[n["type"]]) for n in wf["nodes"] if n["type"] == node_type]


# ---------------------------------------------------------------- tests

def test_workflows_exist():
    names = [os.path.basename(p) for p in EXAMPLES]
    assert names == ["echovideo_faceid_t2v.json", "echovideo_fullbody_t2v.json", "echovideo_upscale_save.json"]
    for p in EXAMPLES:
        assert os.path.isfile(twin_of(p)), f"{p} has no tiny twin {twin_of(p)}"


def test_known_node_ids(info):
    """Our ids come from the pack; the core ids exist in ComfyUI (or the documented list without it)."""
    for nid in nodeinfo.PACK_NODES:
        assert nid in info, f"{nid} not in the pack's node list"
    ours = {nid for nid in info if nid.startswith("EchoVideo")}
    assert ours == set(nodeinfo.PACK_NODES), f"update nodeinfo.PACK_NODES: {ours ^ set(nodeinfo.PACK_NODES)}"
    if comfy_env.available():
        for nid in nodeinfo.CORE_NODES:
            assert nid in info, f"core node {nid} not found in ComfyUI ({nodeinfo.CORE_NODES[nid]})"


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_ui_workflow(path, info):
    wf = load(path)
    for key in ("last_node_id", "last_link_id", "nodes", "links", "version"):
        assert key in wf, f"{key} missing"
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]), "duplicate node ids"
    assert wf["last_node_id"] >= max(nodes) and wf["last_link_id"] >= max(l[0] for l in wf["links"])
    problems = []
    for n in wf["nodes"]:
        for key in ("id", "type", "pos", "size", "inputs", "outputs", "widgets_values"):
            assert key in n, f"node {n.get('id')}: {key} missing"
        t = n["type"]
        if t in nodeinfo.FRONTEND_ONLY:
            continue
        assert t in info, f"node {n['id']}: unknown type {t}"
        assert t in nodeinfo.PACK_NODES or t in nodeinfo.CORE_NODES, f"{t}: add it to nodeinfo.CORE_NODES"
        widgets = ui_widgets(n, info[t])
        sp = {name: (spec, opt) for name, spec, opt in specs(info[t])}
        for name, v in widgets.items():
            problems.append(value_problem(t, name, sp[name][0], v, EXAMPLE_NAMES))
        linked = {i["name"] for i in n["inputs"] if i.get("link") is not None}
        for i in n["inputs"]:
            assert i["name"] in sp, f"node {n['id']} ({t}): input {i['name']} not in the node's spec"
        for name, (spec, opt) in sp.items():
            if not opt and not is_widget(spec) and name not in linked:
                problems.append(f"node {n['id']} ({t}): required input {name} not linked")
        assert len(n["outputs"]) == len(info[t]["output"])
        for slot, o in enumerate(n["outputs"]):
            assert o["type"] == info[t]["output"][slot], f"node {n['id']} output {slot}: {o['type']}"
    for lid, src, sslot, dst, dslot, typ in wf["links"]:
        s, d = nodes[src], nodes[dst]
        out_t = info[s["type"]]["output"][sslot]
        inp = d["inputs"][dslot]
        in_t = dict((nm, sp[0]) for nm, sp, _ in specs(info[d["type"]]))[inp["name"]]
        assert inp["link"] == lid and lid in (s["outputs"][sslot]["links"] or []), f"link {lid} not mirrored"
        if not (types_match(out_t, in_t) and typ == out_t == inp["type"]):
            problems.append(f"link {lid}: {s['type']}[{sslot}] {out_t} -> {d['type']}.{inp['name']} {in_t} "
                            f"(link says {typ})")
    problems = [p for p in problems if p]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_api_twin(path, info):
    wf = load(twin_of(path))
    problems = []
    for nid, n in wf.items():
        t = n["class_type"]
        assert t in info, f"node {nid}: unknown type {t}"
        sp = {name: spec for name, spec, _ in specs(info[t])}
        for name, spec, opt in specs(info[t]):
            if not opt and name not in n["inputs"]:
                problems.append(f"node {nid} ({t}): required input {name} missing")
        for name, v in n["inputs"].items():
            if name not in sp:
                problems.append(f"node {nid} ({t}): unknown input {name}")
            elif isinstance(v, list):
                src = wf[v[0]]
                out_t = info[src["class_type"]]["output"][v[1]]
                if not types_match(out_t, sp[name][0]):
                    problems.append(f"node {nid} ({t}).{name}: {src['class_type']}[{v[1]}] gives {out_t}, "
                                    f"needs {sp[name][0]}")
            else:
                problems.append(value_problem(t, name, sp[name], v, TWIN_NAMES))
    problems = [p for p in problems if p]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_twin_has_example_graph(path):
    ui, api = load(path), load(twin_of(path))
    nodes, edges = ui_graph(ui)
    ui_shape = shape({i: n["type"] for i, n in nodes.items()}, edges)
    api_shape = shape({int(i): n["class_type"] for i, n in api.items()}, api_edges(api))
    assert ui_shape == api_shape


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_settings(path, info):
    """Examples: 848 x 480, 49 frames, 50 steps, cfg 6, dynamic cfg; twins: 64 x 64, 9 frames, 2 steps."""
    ui, api = load(path), load(twin_of(path))
    whole = "fullbody" in path
    for vals, (w, h, f, steps) in ((lambda t: ui_values(ui, info, t), (848, 480, 49, 50)),
                                   (lambda t: api_values(api, t), (64, 64, 9, 2))):
        (frame,) = vals("EchoVideoFaceFrameEncode")
        assert (frame["width"], frame["height"], frame["num_frames"]) == (w, h, f)
        assert frame["width"] % 16 == 0 and frame["height"] % 16 == 0 and (frame["num_frames"] - 1) % 4 == 0
        (s,) = vals("EchoVideoSampler")
        assert (s["steps"], s["cfg"], s["dynamic_cfg"]) == (steps, 6.0, True)
        (fe,) = vals("EchoVideoFaceEncode")
        assert fe["whole_image"] is whole
        (cv,) = vals("CreateVideo")
        assert cv["fps"] == 16.0  # the published demo's fps
        assert len(vals("SaveVideo")) == 1
    if "upscale" in path:
        nodes, edges = ui_graph(ui)
        typed = {(nodes[s]["type"], nodes[d]["type"]) for s, _, d, _ in edges}
        assert ("EchoVideoVAEDecode", "ImageUpscaleWithModel") in typed
        assert ("ImageUpscaleWithModel", "CreateVideo") in typed


def readme_model_table():
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    return "\n".join(l for l in text.splitlines() if l.lstrip().startswith("|") and "models/" in l)


EXAMPLE_FOLDERS = dict(model="diffusion_models", vae="vae", t5="text_encoders", siglip="clip_vision")


def test_committed_workflows_are_the_build_scripts_output(info):
    """workflows/*.json and the tiny twins are what tests/workflows/build_workflows.py writes, so a hand edit
    of a JSON file cannot be lost (or silently undone) at the next regeneration."""
    import build_workflows

    for kind, name, title in build_workflows.KINDS:
        assert load(os.path.join(REPO, "workflows", name + ".json")) == \
            json.loads(json.dumps(build_workflows.ui_workflow(kind, title, info))), \
            f"workflows/{name}.json differs from build_workflows.py's graph: edit the script and regenerate"
        assert load(os.path.join(TWIN_DIR, name + "_tiny_api.json")) == \
            json.loads(json.dumps(build_workflows.api_twin(kind, info))), f"{name}_tiny_api.json is stale"


def test_example_model_names_match_readme():
    """The example workflows name the model folders the README's model table tells users to make."""
    table = readme_model_table()
    assert table, "README.md has no model table (rows with '|' and 'models/')"
    paths = [f"`models/{folder}/{EXAMPLE_NAMES[k]}/`" for k, folder in EXAMPLE_FOLDERS.items()]
    missing = [p for p in paths if p not in table]
    assert not missing, f"README model table does not name {missing}"


@pytest.mark.comfyui
@pytest.mark.skipif(not comfy_env.available(), reason=comfy_env.SKIP_REASON)
def test_snapshot_matches_comfyui(info):
    """The snapshot (used without ComfyUI) must describe the same inputs/outputs as the live nodes."""
    snap = nodeinfo.snapshot_node_info()

    def sig(i):
        return ([(n, "COMBO" if isinstance(s[0], list) else s[0], o) for n, s, o in specs(i)],
                list(i["output"]))
    stale = [t for t in snap if t in info and sig(snap[t]) != sig(info[t])]
    assert not stale, (f"node_info_snapshot.json is stale for {stale}: run "
                       "`python tests/workflows/build_workflows.py` and check the workflows still pass")
