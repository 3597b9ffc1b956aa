"""A real, headless ComfyUI server (CPU) started by this module, followed on its websocket:
- Cancel, as the editor's Cancel button does it: POST /interrupt while the EchoVideo Sampler runs. The prompt must
  end as interrupted (not as an error) before its last step, and the next prompt must run and write its video.
- Text Encode with both encoders connected is refused when queued, before any node runs.
- A loader naming a missing model or an unknown option is refused when queued, before any node runs."""
import asyncio
import copy
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

import comfy_env
import make_tiny_models

pytestmark = comfy_env.requires_comfyui

TWIN = os.path.join(comfy_env.REPO, "tests", "workflows", "echovideo_faceid_t2v_tiny_api.json")
SAMPLER_STEPS = 500  # the Sampler's maximum: minutes of work at the size below, so the cancel lands mid-run
LONG_SIZE = dict(width=320, height=320, num_frames=49)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(base, path):
    with urllib.request.urlopen(base + path, timeout=30) as r:
        return json.loads(r.read())


def history_of(base, prompt_id, timeout=30):
    """The prompt's history entry. The server sends execution_success before it files the prompt in its
    history, so the entry can lag the websocket event by a moment."""
    deadline = time.monotonic() + timeout
    while True:
        entry = get_json(base, f"/history/{prompt_id}").get(prompt_id)
        if entry is not None:
            return entry
        assert time.monotonic() < deadline, f"prompt {prompt_id} not in the server's history after {timeout} s"
        time.sleep(0.1)


def post_json(base, path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        raw = r.read()
    return json.loads(raw) if raw.strip() else None


def node_id(wf, class_type):
    return next(k for k, n in wf.items() if n["class_type"] == class_type)


@pytest.fixture(scope="module")
def server(module_tmp_path):
    """ComfyUI on a free port with only this pack in custom_nodes and the tiny models on its model paths."""
    pytest.importorskip("aiohttp", reason="ComfyUI's own aiohttp (installed with ComfyUI's requirements)")
    with open(os.path.join(comfy_env.COMFYUI_DIR, "comfy", "cli_args.py")) as f:
        if "--base-directory" not in f.read():
            pytest.skip("this ComfyUI predates --base-directory (2025); update COMFYUI_DIR's checkout")
    root = module_tmp_path
    models = root / "models"
    make_tiny_models.write_tiny_models(models)
    make_tiny_models.write_example_photo(root / "input")
    yaml_path = make_tiny_models.write_extra_yaml(models)
    (root / "custom_nodes").mkdir()
    os.symlink(comfy_env.REPO, root / "custom_nodes" / "ComfyUI-EchoVideo")
    port = free_port()  # a free port now; if another process takes it first, ComfyUI exits and the log says so
    log_path = root / "comfyui.log"
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                                 "--disable-auto-launch", "--base-directory", str(root),
                                 "--extra-model-paths-config", yaml_path],
                                cwd=comfy_env.COMFYUI_DIR, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ComfyUI exited ({proc.returncode}) while starting:\n{log_path.read_text()[-3000:]}")
            try:
                info = get_json(base, "/object_info/EchoVideoSampler")
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"ComfyUI did not answer in 300 s:\n{log_path.read_text()[-3000:]}")
                time.sleep(1)
        assert "EchoVideoSampler" in info, f"the pack's nodes are not served:\n{log_path.read_text()[-3000:]}"
        yield dict(base=base, port=port, proc=proc, root=root, log=log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


async def run_prompt(server, prompt, cancel_at_sampler_step=None, timeout=600):
    """Queues `prompt` and follows it on the websocket until it ends. With cancel_at_sampler_step, POSTs
    /interrupt once the Sampler reports that step. Returns (events as (type, data), sampler progress values)."""
    import aiohttp

    client_id = uuid.uuid4().hex
    port, base = server["port"], server["base"]
    sampler = node_id(prompt, "EchoVideoSampler")
    events, progress = [], []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"ws://127.0.0.1:{port}/ws?clientId={client_id}") as ws:
            async with session.post(base + "/prompt", json={"prompt": prompt, "client_id": client_id}) as r:
                queued = await r.json()
                assert r.status == 200 and "prompt_id" in queued, queued
            prompt_id = queued["prompt_id"]
            cancelled = False
            deadline = time.time() + timeout
            while time.time() < deadline:
                try:
                    msg = await ws.receive(timeout=deadline - time.time())
                except asyncio.TimeoutError:
                    break
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                                aiohttp.WSMsgType.ERROR):
                    pytest.fail(f"the websocket closed ({msg.type}); server exit code {server['proc'].poll()}; "
                                f"last events: {events[-5:]}\n{server['log'].read_text()[-3000:]}")
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue  # binary frames are previews
                event = json.loads(msg.data)
                kind, data = event.get("type"), event.get("data") or {}
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                events.append((kind, data))
                if kind == "progress" and data.get("node") == sampler:
                    progress.append(data["value"])
                    if cancel_at_sampler_step is not None and not cancelled and data["value"] >= cancel_at_sampler_step:
                        async with session.post(base + "/interrupt", json={}) as r:
                            assert r.status == 200
                        cancelled = True
                if kind in ("execution_success", "execution_error", "execution_interrupted"):
                    return events, progress, prompt_id
    pytest.fail(f"prompt did not end within {timeout} s; last events: {events[-5:]}")


def test_cancel_stops_the_sampler_and_the_next_prompt_runs(server):
    base_prompt = json.load(open(TWIN))
    long_prompt = copy.deepcopy(base_prompt)
    long_prompt[node_id(long_prompt, "EchoVideoFaceFrameEncode")]["inputs"].update(LONG_SIZE)
    long_prompt[node_id(long_prompt, "EchoVideoSampler")]["inputs"]["steps"] = SAMPLER_STEPS

    events, progress, _ = asyncio.run(run_prompt(server, long_prompt, cancel_at_sampler_step=2))
    log = server["log"].read_text()
    kind, data = events[-1]
    assert kind == "execution_interrupted", f"ended with {kind}: {data}\n{log[-3000:]}"
    assert data.get("node_id") == node_id(long_prompt, "EchoVideoSampler")  # stopped inside the Sampler
    assert progress and progress[-1] < SAMPLER_STEPS
    assert not any(k == "execution_error" for k, _ in events)
    assert server["proc"].poll() is None  # the server is still up

    good = copy.deepcopy(base_prompt)
    good[node_id(good, "EchoVideoSampler")]["inputs"]["seed"] = 11
    good[node_id(good, "SaveVideo")]["inputs"]["filename_prefix"] = "video/echovideo_after_cancel"
    events, progress, prompt_id = asyncio.run(run_prompt(server, good))
    kind, data = events[-1]
    assert kind == "execution_success", f"ended with {kind}: {data}\n{server['log'].read_text()[-3000:]}"
    assert progress[-1] == good[node_id(good, "EchoVideoSampler")]["inputs"]["steps"]
    outputs = history_of(server["base"], prompt_id)["outputs"]
    saved = [f for out in outputs.values() for key in ("images", "animated", "videos") for f in out.get(key, [])
             if isinstance(f, dict) and "echovideo_after_cancel" in f.get("filename", "")]
    assert saved, f"no saved video in the history's outputs: {outputs}"
    path = server["root"] / "output" / saved[0].get("subfolder", "") / saved[0]["filename"]
    assert path.is_file() and path.stat().st_size > 0


def test_text_encode_with_two_encoders_is_refused_at_queue_time(server):
    """Refused by POST /prompt itself (Text Encode's validate_inputs sees both links), so no node runs."""
    import urllib.error

    # without the PreviewImage branch, which does not need Text Encode and would be queued on its own
    prompt = {k: n for k, n in json.load(open(TWIN)).items() if n["class_type"] != "PreviewImage"}
    encode = node_id(prompt, "EchoVideoTextEncode")
    prompt["90"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": make_tiny_models.NAMES["t5"], "type": "sd3"}}
    prompt[encode]["inputs"]["clip"] = ["90", 0]
    req = urllib.request.Request(server["base"] + "/prompt", data=json.dumps({"prompt": prompt}).encode(),
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=30)
    assert refused.value.code == 400
    body = json.loads(refused.value.read())
    errors = body["node_errors"][encode]["errors"]
    assert any("connect exactly one text encoder" in e["details"] and "Both are connected" in e["details"]
               for e in errors), errors
    assert get_json(server["base"], "/queue") == {"queue_running": [], "queue_pending": []}


@pytest.mark.parametrize("class_type, key, value, want", [
    ("EchoVideoModelLoader", "model_name", "missing_echo.safetensors",
     "model 'missing_echo.safetensors' not found in the 'diffusion_models' folders"),
    ("EchoVideoVAELoader", "precision", "fp64", "EchoVideo VAE Loader: precision: got 'fp64', needs one of")])
def test_a_loader_with_a_missing_model_or_unknown_option_is_refused_at_queue_time(server, class_type, key, value, want):
    """Refused by POST /prompt (the loader's validate_inputs), before the T5 or any other node is loaded."""
    import urllib.error

    # without the PreviewImage branch (the face crops), which needs neither loader and would be queued on its own
    prompt = {k: n for k, n in json.load(open(TWIN)).items() if n["class_type"] != "PreviewImage"}
    loader = node_id(prompt, class_type)
    prompt[loader]["inputs"][key] = value
    req = urllib.request.Request(server["base"] + "/prompt", data=json.dumps({"prompt": prompt}).encode(),
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=30)
    assert refused.value.code == 400
    errors = json.loads(refused.value.read())["node_errors"][loader]["errors"]
    assert any(want in e["details"] for e in errors), errors
    assert get_json(server["base"], "/queue") == {"queue_running": [], "queue_pending": []}
