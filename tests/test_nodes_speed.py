"""Speed/memory options as nodes in a real ComfyUI (in-process) on a tiny random DiT: Step Cache, Compile
Settings, ComfyUI partial (lowvram) loading and block swap all keep the sampler's output."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import comfy_env

pytestmark = comfy_env.requires_comfyui

T = comfy_env.TINY
STEPS = 8


FOLDERS = ("diffusion_models", "vae", "clip_vision", "text_encoders", "insightface", "facexlib")


@pytest.fixture(scope="module")
def env(module_tmp_path):
    comfy_env.setup_comfy()
    import folder_paths

    root = module_tmp_path
    made = comfy_env.write_tiny_models(root)
    comfy_env.load_pack()
    saved = {k: folder_paths.folder_names_and_paths.get(k) for k in FOLDERS}
    for k in FOLDERS[:4]:
        folder_paths.folder_names_and_paths[k] = ([str(root / k)], {".safetensors"})
    folder_paths.folder_names_and_paths["insightface"] = ([made["face"]["insightface_root"]], set())
    folder_paths.folder_names_and_paths["facexlib"] = ([made["face"]["facexlib_dir"]], {".pth"})
    folder_paths.filename_list_cache.clear()
    yield made["preset"]
    for k, v in saved.items():
        if v is None:
            folder_paths.folder_names_and_paths.pop(k, None)
        else:
            folder_paths.folder_names_and_paths[k] = v
    folder_paths.filename_list_cache.clear()


def mods():
    return (comfy_env.pack_module("nodes.model_nodes"), comfy_env.pack_module("nodes.sampling_nodes"),
            comfy_env.pack_module("nodes.speed_nodes"), comfy_env.pack_module("nodes.types"))


def load(**kw):
    mn = mods()[0]
    (model,) = comfy_env.run_node(mn.ModelLoader, model_name="echo_tiny.safetensors", weight_dtype="fp32",
                                  attention="sdpa", **kw)
    return model


def inputs(p):
    types = mods()[3]
    g = torch.Generator().manual_seed(1)
    f = (p.frames - 1) // 4 + 1
    lat = torch.randn(1, f, p.latent_channels, p.height // 8, p.width // 8, generator=g) * 0.5
    cond = types.ConditioningData(positive=torch.randn(1, p.text_len, p.text_dim, generator=g),
                                  negative=torch.randn(1, p.text_len, p.text_dim, generator=g))
    return cond, types.ImageLatentsData(latents=lat, width=p.width, height=p.height, num_frames=p.frames)


def sample(model, p, steps=STEPS):
    sn = mods()[1]
    cond, img = inputs(p)
    (latent,) = comfy_env.run_node(sn.Sampler, model=model, conditioning=cond, image_latents=img, steps=steps,
                                   cfg=6.0, dynamic_cfg=True, seed=5)
    return latent["samples"]


@pytest.fixture(scope="module")
def reference(env):
    return sample(load(), env)


@pytest.fixture
def caches(monkeypatch):
    """Records the StepCache objects the sampler makes."""
    from echovideo import step_cache

    made = []

    class Recording(step_cache.StepCache):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(step_cache, "StepCache", Recording)
    return made


def test_new_nodes_documented():
    _, _, sp, _ = mods()
    mn = mods()[0]
    for cls in sp.NODES:
        s = cls.GET_SCHEMA()
        assert s.description and s.category == "EchoVideo" and s.display_name.startswith("EchoVideo ")
        for i in s.inputs:
            assert i.tooltip, f"{s.node_id}.{i.id} has no tooltip"
        for o in s.outputs:
            assert o.tooltip
    assert [c.GET_SCHEMA().node_id for c in sp.NODES] == ["EchoVideoCompileSettings", "EchoVideoStepCache"]
    # compile is a model -> model node: changing its options re-runs the sampler, never the loader
    assert [i.id for i in sp.CompileSettingsNode.GET_SCHEMA().inputs][0] == "model"
    assert "compile_settings" not in str(mn.ModelLoader.INPUT_TYPES())


def test_step_cache_threshold_zero_is_identical(env, reference, caches):
    sp = mods()[2]
    base = load()
    (cached,) = comfy_env.run_node(sp.StepCacheNode, model=base, threshold=0.0, warmup_steps=2)
    assert base.step_cache is None and cached.patcher is base.patcher  # a copy; the loader output is unchanged
    assert torch.equal(sample(cached, env), reference)
    assert len(caches) == 1 and caches[0].skipped == 0 and caches[0].calls == STEPS


def test_step_cache_high_threshold_skips(env, reference, caches):
    sp = mods()[2]
    (cached,) = comfy_env.run_node(sp.StepCacheNode, model=load(), threshold=1.0, warmup_steps=2)
    out = sample(cached, env)
    c = caches[0]
    assert c.calls + c.skipped == STEPS and c.skipped >= STEPS // 2 and c.calls < STEPS
    assert out.shape == reference.shape and torch.isfinite(out).all() and not torch.equal(out, reference)


def test_step_cache_warmup_reaches_the_sampler(env, caches):
    """warmup_steps is the node's, not the default: with warm-up over all but the last step nothing is skipped,
    even at a threshold that skips most steps otherwise (test_step_cache_high_threshold_skips)."""
    sp = mods()[2]
    (cached,) = comfy_env.run_node(sp.StepCacheNode, model=load(), threshold=1.0, warmup_steps=STEPS - 1)
    sample(cached, env)
    assert caches[0].warmup_steps == STEPS - 1 and caches[0].threshold == 1.0
    assert caches[0].skipped == 0 and caches[0].calls == STEPS


def test_no_step_cache_without_node(env, caches):
    sample(load(), env, steps=2)
    assert caches == []


def test_compile_node_matches_uncompiled_and_leaves_the_loader_output_eager(env, reference):
    torch._dynamo.reset()
    sp = mods()[2]
    base = load()
    (compiled,) = comfy_env.run_node(sp.CompileSettingsNode, model=base, backend="aot_eager", mode="default",
                                     dynamic=False)
    assert compiled.compile.backend == "aot_eager" and compiled.compile.mode is None and compiled.compile.dynamic is None
    assert base.compile is None and compiled.patcher is base.patcher  # a copy; the loader output is unchanged
    blocks = compiled.model.transformer_blocks
    assert all(b._compiled_call_impl is None for b in blocks)  # compiled when the sampler runs it
    torch.testing.assert_close(sample(compiled, env), reference, rtol=1e-5, atol=1e-5)
    assert compiled.model.compiled_with == "aot_eager" and all(b._compiled_call_impl is not None for b in blocks)
    # the same loaded model sampled without the node runs eager again
    torch.testing.assert_close(sample(base, env), reference, rtol=0, atol=0)
    assert base.model.compiled_with is None and all(b._compiled_call_impl is None for b in blocks)
    torch._dynamo.reset()


def test_compiled_dit_refused_for_size_is_left_uncompiled(env, monkeypatch):
    """A compiled DiT that cannot load whole is refused before loading, and the shared DiT is not left compiled:
    the next prompt's nodes without Compile Settings load it as usual."""
    sp, bridge = mods()[2], comfy_env.pack_module("nodes.bridge")
    base = load()
    (compiled,) = comfy_env.run_node(sp.CompileSettingsNode, model=base, backend="eager", mode="default",
                                     dynamic=False)

    def too_large(patchers, memory_required=0):
        raise bridge.CompiledModelTooLarge("EchoVideo: a torch.compiled DiT loads whole (simulated)")

    monkeypatch.setattr(bridge, "load_gpu", too_large)
    with pytest.raises(bridge.CompiledModelTooLarge, match="simulated"):
        sample(compiled, env)
    assert base.model.compiled_with is None
    assert all(b._compiled_call_impl is None for b in base.model.transformer_blocks)
    torch._dynamo.reset()


def test_inductor_without_compiler_says_why(env, monkeypatch):
    sp = mods()[2]
    monkeypatch.setattr(sp.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="Compile Settings: backend: .*C\\+\\+ compiler"):
        comfy_env.run_node(sp.CompileSettingsNode, model=load(), backend="inductor", mode="default", dynamic=True)
    (eager,) = comfy_env.run_node(sp.CompileSettingsNode, model=load(), backend="aot_eager", mode="default",
                                  dynamic=True)
    assert eager.compile.dynamic is True
    assert sp.compile_problem("aot_eager", "cuda") is None


def test_comfy_partial_loading_matches_full(env, reference, monkeypatch):
    """ModelPatcher lowvram load (weights left on the offload device, cast per layer by comfy.ops) on
    CPU -> CPU: the DiT's layers take it and the sampler output is unchanged."""
    mn, sn, _, _ = mods()
    bridge = comfy_env.pack_module("nodes.bridge")
    model = load()
    patcher = model.patcher
    budget = patcher.model_size() // 3

    def partial_load(patchers, memory_required=0):
        patcher.load(torch.device("cpu"), lowvram_model_memory=budget)

    monkeypatch.setattr(bridge, "load_gpu", partial_load)
    out = sample(model, env)
    dit = patcher.model
    assert dit.model_lowvram
    streamed = [n for n, m in dit.named_modules() if getattr(m, "comfy_cast_weights", False)]
    assert any(n.startswith("transformer_blocks.") for n in streamed)
    torch.testing.assert_close(out, reference, rtol=0, atol=0)


def test_sampler_runs_on_the_load_device_not_the_first_weights(env, monkeypatch):
    """With a partial load the first weight may sit on the offload device; the Sampler passes ComfyUI's load
    device to the loop instead of guessing it from the weights."""
    import echovideo.sampling

    _, sn, _, _ = mods()
    model = load()
    seen = {}
    real = echovideo.sampling.sample

    def recording_sample(*a, **kw):
        seen["device"] = kw.get("device")
        return real(*a, **kw)

    monkeypatch.setattr(echovideo.sampling, "sample", recording_sample)
    sample(model, env, steps=1)
    assert seen["device"] == model.patcher.load_device == model.device


@pytest.mark.parametrize("cfg, batch", [(6.0, 2), (1.0, 1)])
def test_sampler_asks_comfy_for_its_peak_memory(env, monkeypatch, cfg, batch):
    """The Sampler's memory request is the memory plan's estimate for its batch (both CFG branches at once)."""
    from echovideo.memory import sampling_memory_bytes

    _, sn, _, _ = mods()
    bridge = comfy_env.pack_module("nodes.bridge")
    model = load()
    asked = []
    real = bridge.load_gpu
    monkeypatch.setattr(bridge, "load_gpu", lambda p, memory_required=0: (asked.append(memory_required), real(p))[1])
    cond, img = inputs(env)
    comfy_env.run_node(sn.Sampler, model=model, conditioning=cond, image_latents=img, steps=1, cfg=cfg,
                       dynamic_cfg=True, seed=5)
    _, frames, _, h, w = img.latents.shape
    need = sampling_memory_bytes(model.config, frames, h, w, batch=batch, dtype=model.compute_dtype,
                                 device=model.device, weight_dtype=model.weight_dtype)
    assert asked == [need]
    # float32 on this CPU: the GELU's scratch layer is asked for too (a GPU's GELU runs in place)
    assert model.device.type == "cpu" and model.compute_dtype == torch.float32
    assert need > sampling_memory_bytes(model.config, frames, h, w, batch=batch, dtype=model.compute_dtype)
    assert sampling_memory_bytes(model.config, frames, h, w, batch=2, dtype=model.compute_dtype) > \
        sampling_memory_bytes(model.config, frames, h, w, batch=1, dtype=model.compute_dtype)
    asked.clear()  # with the Step Cache node, its tensors too
    (cached,) = comfy_env.run_node(mods()[2].StepCacheNode, model=model, threshold=0.05, warmup_steps=2)
    comfy_env.run_node(sn.Sampler, model=cached, conditioning=cond, image_latents=img, steps=1, cfg=cfg,
                       dynamic_cfg=True, seed=5)
    with_cache = sampling_memory_bytes(model.config, frames, h, w, batch=batch, dtype=model.compute_dtype,
                                       step_cache=True, device=model.device, weight_dtype=model.weight_dtype)
    assert asked == [with_cache] and with_cache > need
    asked.clear()  # fp8 weights: a layer's weight cast for compute too
    mn = mods()[0]
    (fp8,) = comfy_env.run_node(mn.ModelLoader, model_name="echo_tiny.safetensors", weight_dtype="fp8_e4m3fn",
                                attention="sdpa")
    comfy_env.run_node(sn.Sampler, model=fp8, conditioning=cond, image_latents=img, steps=1, cfg=cfg,
                       dynamic_cfg=True, seed=5)
    cast = 4 * fp8.config.inner_dim ** 2 * fp8.compute_dtype.itemsize
    assert fp8.weight_dtype == torch.float8_e4m3fn and asked == [need + cast]


def test_dit_modules_all_support_partial_loading(env):
    """Every module with its own weights is a comfy.ops layer (ModelPatcher can leave it on the offload
    device and cast it per call) -- except IdentityResampler.latents: a parameter of a non-leaf module,
    which ModelPatcher's partial load skips (never moves). It runs in IITF Fusion only; the resampler must
    move it to the input's device itself for low-VRAM GPU loads."""
    model = load()
    dit = model.model
    plain = [n for n, m in dit.named_modules()
             if list(m.parameters(recurse=False)) and not hasattr(m, "comfy_cast_weights")]
    assert plain == ["face_prj_wofc"], plain
    assert "face_prj_wofc" not in [x[1] for x in model.patcher._load_list()]


def test_block_swap_composes_with_sampler_interrupt_hook(env, reference):
    from echovideo.offload import BlockSwap, disable_block_swap, enable_block_swap

    model = load()
    dit = model.model
    swap = enable_block_swap(dit, blocks_on_offload=1, device="cpu", offload_device="cpu")
    seen, seen_after = [], []
    before, after = swap.before, swap.after
    swap.before = lambda i, b: (seen.append(i), before(i, b))
    swap.after = lambda i, b: (seen_after.append(i), after(i, b))  # moves a swapped block back off the GPU
    out = sample(model, env, steps=STEPS)
    assert isinstance(dit.block_hook, BlockSwap) and dit.block_hook is swap  # restored after sampling
    assert seen and set(seen) == set(range(len(dit.transformer_blocks)))
    assert seen_after == seen  # the interrupt hook hands every block's `after` on, in order
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    disable_block_swap(dit, "cpu")


def test_text_and_siglip_models_are_managed_by_comfy(env):
    """T5 and SigLIP run through ComfyUI's model management: loaded on use, unloaded (moved to their
    offload device) when ComfyUI frees memory for the next model."""
    import numpy as np

    import comfy.model_management as mm

    tn = comfy_env.pack_module("nodes.text_nodes")
    fn = comfy_env.pack_module("nodes.face_nodes")
    run = comfy_env.run_node
    (t5,) = run(tn.T5Loader, t5_name="t5_tiny.safetensors", precision="fp32")
    run(tn.TextEncode, positive="a man smiles", negative="", t5=t5)
    (enc,) = run(fn.FaceEncoderLoader, siglip_name="siglip_tiny.safetensors", face_device="cpu")
    photo = torch.from_numpy(np.random.default_rng(0).random((1, 480, 480, 3)).astype(np.float32))
    run(fn.FaceEncode, face_encoder=enc, image=photo, face_index=0, whole_image=False, average_embeddings=False)

    def loaded():
        return [m.model for m in mm.current_loaded_models]

    assert t5.patcher in loaded() and enc.siglip in loaded()
    mm.free_memory(1 << 60, mm.get_torch_device())  # what load_models_gpu does when the DiT needs room
    assert t5.patcher not in loaded() and enc.siglip not in loaded()
    assert t5.patcher.model.device == t5.patcher.offload_device


@pytest.mark.golden
@pytest.mark.parametrize("path", __import__("golden").golden_params())
def test_comfy_attention_matches_golden(env, path, monkeypatch):
    """The `comfy` backend (ComfyUI's optimized_attention, as launched: on this CPU its pytorch/sub-quadratic
    path) gives the published numbers at the level-1 fp32 tolerance, and really goes through ComfyUI."""
    import comfy.ldm.modules.attention as comfy_attention

    from golden import Golden, assert_close_scaled, level1_output
    from test_golden import build_dit

    calls = []
    real = comfy_attention.optimized_attention
    monkeypatch.setattr(comfy_attention, "optimized_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    comfy_env.pack_module("nodes.bridge").register_comfy_attention()
    g = Golden(path)
    model = build_dit(g)
    model.set_attention("comfy")
    assert_close_scaled(level1_output(model, g), g["transformer.out.model_output"], name="comfy attention")
    assert len(calls) == g.meta["transformer_config"]["num_layers"]  # one call per block


# --- mutation sweep (speed nodes): compile checks per device, option validation, defaults, node list, entrypoint ---


def _bundle_on(device):
    """A ModelBundle whose ComfyUI load device is `device` (no weights: the checks run before any model use)."""
    from types import SimpleNamespace

    types = mods()[3]
    return types.ModelBundle(patcher=SimpleNamespace(load_device=torch.device(device)), path="x",
                             weight_dtype=torch.float32, compute_dtype=torch.float32)


def test_inductor_checks_triton_on_the_models_gpu(env, monkeypatch):
    """On a CUDA load device inductor needs Triton (a failing probe counts as missing), not a C++ compiler;
    the check uses the model's device, not the machine running the graph."""
    import torch.utils._triton as triton_probe

    sp = mods()[2]
    monkeypatch.setattr(sp.shutil, "which", lambda name: None)  # no C++ compiler: irrelevant on a GPU
    monkeypatch.setattr(triton_probe, "has_triton", lambda: True)
    assert sp.compile_problem("inductor", "cuda") is None
    (out,) = comfy_env.run_node(sp.CompileSettingsNode, model=_bundle_on("cuda"), backend="inductor",
                                mode="default", dynamic=False)
    assert out.compile.backend == "inductor"
    for probe in (lambda: False, lambda: 1 / 0):
        monkeypatch.setattr(triton_probe, "has_triton", probe)
        assert "Triton" in sp.compile_problem("inductor", "cuda")
        with pytest.raises(RuntimeError, match="Compile Settings: backend: the inductor backend needs a working Triton"):
            comfy_env.run_node(sp.CompileSettingsNode, model=_bundle_on("cuda"), backend="inductor", mode="default",
                               dynamic=False)
    assert sp.compile_problem("aot_eager", "cuda") is None and sp.compile_problem("eager", "cpu") is None


def test_inductor_on_cpu_needs_any_one_cpp_compiler(env, monkeypatch):
    sp = mods()[2]
    for compiler in ("g++", "c++", "clang++", "cl"):
        monkeypatch.setattr(sp.shutil, "which", lambda name, _c=compiler: "/usr/bin/x" if name == _c else None)
        assert sp.compile_problem("inductor", "cpu") is None, compiler
    monkeypatch.setattr(sp.shutil, "which", lambda name: None)
    assert "C++ compiler" in sp.compile_problem("inductor", "cpu")
    assert sp.compile_problem("aot_eager", "cpu") is None


@pytest.mark.parametrize("option, value", [("backend", "nope"), ("mode", "turbo")])
def test_compile_node_refuses_unknown_options(env, option, value):
    sp = mods()[2]
    kw = dict(backend="aot_eager", mode="default", dynamic=False)
    kw[option] = value
    with pytest.raises(ValueError, match=f"EchoVideo Compile Settings: {option}: got '{value}', needs one of"):
        comfy_env.run_node(sp.CompileSettingsNode, model=_bundle_on("cpu"), **kw)


def test_speed_node_outputs_are_copies_with_plain_settings(env):
    """Both nodes return a new bundle (the input keeps no setting); settings are immutable, with the
    library's defaults; the node's mode/dynamic widgets map to torch.compile's (None = torch's default)."""
    import dataclasses

    from echovideo.step_cache import DEFAULT_THRESHOLD, DEFAULT_WARMUP_STEPS

    sp, types = mods()[2], mods()[3]
    base = _bundle_on("cpu")
    (compiled,) = comfy_env.run_node(sp.CompileSettingsNode, model=base, backend="eager",
                                     mode="reduce-overhead", dynamic=True)
    assert compiled is not base and base.compile is None
    assert compiled.compile == types.CompileSettingsData(backend="eager", mode="reduce-overhead", dynamic=True)
    (cached,) = comfy_env.run_node(sp.StepCacheNode, model=compiled, threshold=0, warmup_steps=3.0)
    assert cached is not compiled and compiled.step_cache is None and cached.compile == compiled.compile
    assert cached.step_cache == types.StepCacheSettings(threshold=0.0, warmup_steps=3)
    assert type(cached.step_cache.threshold) is float and type(cached.step_cache.warmup_steps) is int
    assert types.StepCacheSettings() == types.StepCacheSettings(DEFAULT_THRESHOLD, DEFAULT_WARMUP_STEPS)
    assert types.CompileSettingsData() == types.CompileSettingsData("inductor", None, None)
    for bad, name in ((5.0, "threshold"), (-0.1, "threshold"), (float("nan"), "threshold"), (True, "threshold")):
        with pytest.raises(ValueError, match=f"^EchoVideo Step Cache: {name}: got .*needs a number from 0 to 1"):
            comfy_env.run_node(sp.StepCacheNode, model=compiled, threshold=bad, warmup_steps=3)
    for bad in (1, 2.5, 501, float("nan")):  # linked values skip the widget's limits
        with pytest.raises(ValueError, match=f"^EchoVideo Step Cache: warmup_steps: got {bad!r}, needs an integer"):
            comfy_env.run_node(sp.StepCacheNode, model=compiled, threshold=0.1, warmup_steps=bad)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cached.step_cache.threshold = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cached.compile.backend = "inductor"
    widgets = {i.id: i for i in sp.StepCacheNode.GET_SCHEMA().inputs}
    assert widgets["threshold"].default == DEFAULT_THRESHOLD and widgets["warmup_steps"].default == DEFAULT_WARMUP_STEPS
    assert widgets["warmup_steps"].min == 2


def test_node_list_skips_a_module_that_fails_to_import(env, monkeypatch, caplog):
    """One node module failing to import drops its nodes with a warning; the others (speed nodes included)
    still load."""
    import importlib
    import logging

    pack_nodes = comfy_env.pack_module("nodes")
    real = importlib.import_module

    def failing(name, *a, **k):
        if name.endswith(".face_nodes"):
            raise ImportError("no insightface")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", failing)
    with caplog.at_level(logging.WARNING, logger="EchoVideo"):
        ids = [c.GET_SCHEMA().node_id for c in pack_nodes.node_list()]
    assert "EchoVideoFaceEncode" not in ids and "EchoVideoSampler" in ids
    assert ids[-2:] == ["EchoVideoCompileSettings", "EchoVideoStepCache"]
    assert any("face_nodes" in r.getMessage() and "no insightface" in r.getMessage() for r in caplog.records)


def test_entrypoint_sets_up_folders_on_load_and_before_listing(env, monkeypatch):
    import asyncio

    pack = comfy_env.load_pack()
    calls = []
    monkeypatch.setattr(pack.bridge, "setup", lambda: calls.append("setup"))
    ext = asyncio.run(pack.comfy_entrypoint())
    asyncio.run(ext.on_load())
    assert calls == ["setup"]
    nodes = asyncio.run(ext.get_node_list())
    assert calls == ["setup", "setup"] and nodes


class DeviceMixCheck(TorchDispatchMode):
    """Records ops whose tensors sit on more than one device type (0-dim CPU scalars and copies aside)."""

    def __init__(self):
        super().__init__()
        self.mixes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        flat, _ = tree_flatten((args, kwargs or {}))
        devices = {t.device.type for t in flat if isinstance(t, torch.Tensor)
                   and not (t.dim() == 0 and t.device.type == "cpu")}
        if len(devices) > 1 and "copy" not in func.__name__:
            self.mixes.add((func.__name__, tuple(sorted(devices))))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("weight_dtype", ["fp32", "bf16", "fp8_e4m3fn"])
def test_partial_load_onto_another_device_mixes_no_devices(env, monkeypatch, weight_dtype):
    """ComfyUI's lowvram load onto a device other than the CPU ("meta" stands in for the GPU: it has no data, so
    any op that meets a CPU tensor is a device mix) with the inputs on the CPU, as ComfyUI hands them over:
    IITF Fusion, the step cache and the Sampler run without an op that mixes devices (a CPU -> CPU test
    cannot see one)."""
    if weight_dtype.startswith("fp8") and not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("this torch has no float8")
    mn, sn, sp, types = mods()
    fn = comfy_env.pack_module("nodes.face_nodes")
    bridge = comfy_env.pack_module("nodes.bridge")
    meta = torch.device("meta")
    (model,) = comfy_env.run_node(mn.ModelLoader, model_name="echo_tiny.safetensors", weight_dtype=weight_dtype,
                                  attention="sdpa")
    patcher = model.patcher
    patcher.load_device = meta
    budget = patcher.model_size() // 3
    monkeypatch.setattr(bridge, "load_gpu", lambda patchers, memory_required=0: patcher.load(
        meta, lowvram_model_memory=budget))
    monkeypatch.setattr(bridge, "intermediate_device", lambda: meta)
    from echovideo import step_cache

    monkeypatch.setattr(step_cache, "mean_abs", lambda x: 0.01)  # meta tensors hold no values to read
    cfg, p = model.config, env
    g = torch.Generator().manual_seed(0)
    text = types.TextEmbedsData(positive=torch.randn(1, cfg.max_text_seq_length, cfg.text_embed_dim, generator=g),
                                negative=torch.randn(1, cfg.max_text_seq_length, cfg.text_embed_dim, generator=g))
    tokens = lambda: torch.randn(1, cfg.face_seq_length, cfg.face_embed_dim, generator=g)  # noqa: E731
    identity = types.IdentityData(id_embedding=torch.randn(1, 512, generator=g), face_tokens=tokens(),
                                  face_crop=torch.zeros(8, 8, 3, dtype=torch.uint8),
                                  extra={"negative_face_tokens": tokens()})
    _, img = inputs(p)
    check = DeviceMixCheck()
    with check:
        (cond,) = comfy_env.run_node(fn.IITFFusion, model=model, text=text, identity=identity)
        (cached,) = comfy_env.run_node(sp.StepCacheNode, model=model, threshold=0.05, warmup_steps=2)
        (latent,) = comfy_env.run_node(sn.Sampler, model=cached, conditioning=cond, image_latents=img, steps=4,
                                       cfg=6.0, dynamic_cfg=True, seed=1)
    assert patcher.model.model_lowvram
    assert any(getattr(m, "comfy_cast_weights", False) for n, m in patcher.model.named_modules()
               if n.startswith("transformer_blocks."))  # some block weights really stayed on the CPU
    assert cond.positive.device == meta and latent["samples"].device == meta
    assert not check.mixes, sorted(check.mixes)


def test_loader_default_keeps_a_stored_fp8_file_with_its_bf16_norms(env, module_tmp_path, monkeypatch):
    """A released-style fp8 file (matrices fp8, norms and biases bf16), 'default' where ComfyUI keeps fp8 (fp8
    compute here): the matrices stay fp8, the norms and biases unrounded, and ComfyUI's casting layers run it."""
    import json

    import comfy.model_management as mm
    import folder_paths
    from safetensors.torch import save_file

    mn, _, _, _ = mods()
    (plain,) = comfy_env.run_node(mn.ModelLoader, model_name="echo_tiny.safetensors", weight_dtype="fp32",
                                  attention="sdpa")
    dit = plain.model
    state = {k: (v.to(torch.float8_e4m3fn) if v.dim() >= 2 else v.to(torch.bfloat16)).contiguous()
             for k, v in dit.state_dict().items()}
    save_file(state, str(module_tmp_path / "diffusion_models" / "echo_fp8_mixed.safetensors"),
              metadata={"config": json.dumps(dit.config.to_dict()), "format": "pt"})
    folder_paths.filename_list_cache.clear()
    monkeypatch.setattr(mm, "supports_fp8_compute", lambda *a, **k: True)
    (model,) = comfy_env.run_node(mn.ModelLoader, model_name="echo_fp8_mixed.safetensors", weight_dtype="default",
                                  attention="sdpa")
    assert model.weight_dtype == torch.float8_e4m3fn
    loaded = model.model.state_dict()
    assert all(loaded[k].dtype == v.dtype and torch.equal(loaded[k].float(), v.float()) for k, v in state.items())
    c = dit.config
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(1, 2, c.in_channels, 8, 8, generator=g), torch.randn(1, 16, c.text_embed_dim, generator=g),
            torch.tensor([500.0]))
    out, ref = model.model(*args), dit(*args)
    assert torch.isfinite(out).all()
    err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
    print(f"fp8 file, default dtype: max error {err:.3f} of scale")
    assert err < 0.25  # fp8 matrices on random tiny weights (seen 4.6%)
