"""End to end in a real, headless ComfyUI (CPU): the pack imports, every node is served, each tiny twin
(tests/workflows/*_tiny_api.json) runs through the HTTP API and writes its video, bad inputs give a clear
error and the next prompt still runs. Uses the shared folder's tools/comfyui-run-workflow (one server start; COMFYUI_RUN_WORKFLOW overrides)."""
import copy
import json
import os
import re
import subprocess
import sys

import pytest

import comfy_env
import make_tiny_models
from golden import SHARED

REPO = comfy_env.REPO
TOOL = os.environ.get("COMFYUI_RUN_WORKFLOW") or str(SHARED / "tools" / "comfyui-run-workflow")
TWIN_DIR = os.path.join(REPO, "tests", "workflows")
TWINS = sorted(f for f in os.listdir(TWIN_DIR) if f.endswith("_tiny_api.json"))
sys.path.insert(0, TWIN_DIR)
import nodeinfo  # noqa: E402

pytestmark = comfy_env.requires_comfyui + [
    pytest.mark.skipif(not os.path.isfile(TOOL), reason=f"needs {TOOL} (the shared comfyui-run-workflow tool; or set "
                                                   "COMFYUI_RUN_WORKFLOW to its path)")]


def load(name):
    with open(os.path.join(TWIN_DIR, name)) as f:
        return json.load(f)


def node_of(wf, class_type):
    return next(n for n in wf.values() if n["class_type"] == class_type)


UNLINK = object()  # bad_prompts: remove the input's link


def bad_prompts():
    """(file name, prompt, text the error must contain); the last one is good and must run after them."""
    base = load("echovideo_faceid_t2v_tiny_api.json")
    out = []
    for name, (ct, key, value), want in [
            ("bad_frames", ("EchoVideoFaceFrameEncode", "num_frames", 10), "num_frames: got 10, needs 8k+1"),
            ("bad_width", ("EchoVideoFaceFrameEncode", "width", 72), "width: got 72, needs a positive multiple of 16"),
            ("missing_model", ("EchoVideoModelLoader", "model_name", "missing_echo.safetensors"),
             "missing_echo.safetensors"),
            ("no_text_encoder", ("EchoVideoTextEncode", "t5", UNLINK), "Neither is connected")]:
        wf = copy.deepcopy(base)
        if value is UNLINK:
            del node_of(wf, ct)["inputs"][key]
        else:
            node_of(wf, ct)["inputs"][key] = value
        # without this, /prompt queues the still-valid PreviewImage branch (200 + node_errors)
        wf = {k: n for k, n in wf.items() if n["class_type"] != "PreviewImage"}
        out.append((name, wf, want))
    good = copy.deepcopy(base)
    node_of(good, "EchoVideoSampler")["inputs"]["seed"] = 8  # not a cached repeat
    node_of(good, "SaveVideo")["inputs"]["filename_prefix"] = "video/echovideo_tiny_after_errors"
    out.append(("after_errors", good, None))
    return out


@pytest.fixture(scope="module")
def run(module_tmp_path):
    tmp = module_tmp_path
    models, inp, out = tmp / "models", tmp / "input", tmp / "output"
    make_tiny_models.write_tiny_models(models)
    make_tiny_models.write_example_photo(inp)
    yaml_path = make_tiny_models.write_extra_yaml(models)
    files = [os.path.join(TWIN_DIR, t) for t in TWINS]
    for name, wf, _ in bad_prompts():
        p = tmp / f"{name}_api.json"
        p.write_text(json.dumps(wf))
        files.append(str(p))
    files += sorted(os.path.join(REPO, "workflows", f) for f in os.listdir(os.path.join(REPO, "workflows"))
                    if f.endswith(".json"))
    env = dict(os.environ, COMFYUI_DIR=comfy_env.COMFYUI_DIR, COMFYUI_PYTHON=sys.executable,
               COMFYUI_ARGS=f"--extra-model-paths-config {yaml_path}")
    env.pop("COMFYUI_ALL_CUSTOM_NODES", None)
    proc = subprocess.run([sys.executable, TOOL, "--out", str(out), "--input-dir", str(inp), "--timeout", "300",
                           REPO] + files, env=env, capture_output=True, text=True, timeout=900)
    text = proc.stdout + proc.stderr
    results = {}  # workflow file name -> (ok, message, [written files])
    current = None
    for line in text.splitlines():
        m = re.match(r"(PASS|FAIL) (\S+) \([\d.]+s\): (.*)", line)
        if m:
            current = os.path.basename(m.group(2))
            results[current] = [m.group(1) == "PASS", m.group(3), []]
        elif current and line.startswith("  wrote "):
            results[current][2].append(line.split()[1])
        elif current and not line.startswith("---"):
            results[current][1] += "\n" + line
        if line.startswith("---"):
            current = None
    return dict(text=text, rc=proc.returncode, results=results, out=out, log=out / "comfyui.log")


def test_pack_imports_and_serves_every_node(run):
    m = re.search(r"^pack \S+: \d+ node\(s\): (.*)$", run["text"], re.M)
    assert m, f"the pack did not import:\n{run['text'][-3000:]}"
    served = set(m.group(1).split(", "))
    assert set(nodeinfo.PACK_NODES) <= served, f"missing from /object_info: {set(nodeinfo.PACK_NODES) - served}"
    log = run["log"].read_text(errors="replace")
    name = os.path.basename(REPO)
    assert not [l for l in log.splitlines() if "IMPORT FAILED" in l and name in l]
    assert f"Cannot import {REPO}" not in log


@pytest.mark.parametrize("twin", TWINS)
def test_tiny_twin_runs_and_writes_video(run, twin):
    import av

    ok, msg, written = run["results"][twin]
    assert ok, msg
    wf = load(twin)
    prefix = node_of(wf, "SaveVideo")["inputs"]["filename_prefix"]
    videos = [p for p in written if p.endswith(".mp4") and os.path.basename(prefix) in os.path.basename(p)]
    assert len(videos) == 1, written
    assert os.path.getsize(videos[0]) > 0
    frame_node = node_of(wf, "EchoVideoFaceFrameEncode")["inputs"]
    scale = 2 if any(n["class_type"] == "ImageUpscaleWithModel" for n in wf.values()) else 1  # tiny 2x upscaler
    with av.open(videos[0]) as c:
        frames = list(c.decode(video=0))
    assert len(frames) == frame_node["num_frames"]
    assert (frames[0].width, frames[0].height) == (frame_node["width"] * scale, frame_node["height"] * scale)
    assert any(p.endswith(".png") for p in written), "PreviewImage of the face crops wrote nothing"


def test_bad_inputs_give_clear_errors_and_next_prompt_runs(run):
    for name, _, want in bad_prompts():
        ok, msg, written = run["results"][f"{name}_api.json"]
        if want is None:
            assert ok, f"the prompt after the errors failed: {msg}"
            assert any(p.endswith(".mp4") for p in written)
        else:
            assert not ok and want in msg, f"{name}: {msg[:1500]}"
            assert "Traceback" not in msg.split("\n")[0]


def test_ui_workflows_validate(run):
    for f in os.listdir(os.path.join(REPO, "workflows")):
        if f.endswith(".json"):
            ok, msg, _ = run["results"][f]
            assert ok, msg
