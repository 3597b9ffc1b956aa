"""nodes/bridge.py in a real ComfyUI (in-process): folders, resolution, dtypes, ops, progress, unload hook."""
import os
import re
import sys
import types

import pytest
import torch

import comfy_env

pytestmark = comfy_env.requires_comfyui


@pytest.fixture
def bridge():
    return comfy_env.pack_module("nodes.bridge")


def test_folders_keep_extra_model_paths(bridge, tmp_path, monkeypatch):
    import folder_paths

    extra = str(tmp_path / "shared_insightface")
    # what utils/extra_config.py does for a yaml key before custom nodes load
    monkeypatch.delitem(folder_paths.folder_names_and_paths, "insightface", raising=False)
    monkeypatch.delitem(folder_paths.folder_names_and_paths, "facexlib", raising=False)
    folder_paths.add_model_folder_path("insightface", extra)
    bridge.register_model_folders()
    bridge.register_model_folders()  # idempotent
    paths = folder_paths.get_folder_paths("insightface")
    assert paths == [extra, os.path.join(folder_paths.models_dir, "insightface")]
    assert folder_paths.get_folder_paths("facexlib") == [os.path.join(folder_paths.models_dir, "facexlib")]
    assert ".pth" in folder_paths.folder_names_and_paths["facexlib"][1]
    assert "clip_vision" in folder_paths.folder_names_and_paths


def test_resolve_errors_name_file_folders_and_readme(bridge):
    with pytest.raises(FileNotFoundError) as e:
        bridge.resolve("vae", "cogvideox_vae.safetensors")
    msg = str(e.value)
    assert "cogvideox_vae.safetensors" in msg and "README" in msg
    import folder_paths

    for p in folder_paths.get_folder_paths("vae"):
        assert p in msg
    with pytest.raises(FileNotFoundError, match="none selected"):
        bridge.resolve_entry("vae", "")
    with pytest.raises(FileNotFoundError):
        bridge.resolve_entry("vae", "../../etc")


def test_resolve_entry_finds_folders_and_files(bridge, tmp_path, monkeypatch):
    import folder_paths

    (tmp_path / "CogVideoX" / "transformer").mkdir(parents=True)
    (tmp_path / "CogVideoX" / "transformer" / "config.json").write_text("{}")
    (tmp_path / "x.safetensors").write_bytes(b"")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "diffusion_models", ([str(tmp_path)], {".safetensors"}))
    folder_paths.filename_list_cache.pop("diffusion_models", None)
    assert bridge.model_folders("diffusion_models") == ["CogVideoX/transformer"]
    assert bridge.resolve_entry("diffusion_models", "CogVideoX/transformer") == str(tmp_path / "CogVideoX" / "transformer")
    assert bridge.resolve_entry("diffusion_models", "x.safetensors") == str(tmp_path / "x.safetensors")
    assert bridge.file_list("diffusion_models") == ["x.safetensors"]
    # the released folder's shards are not offered on their own (one shard is not a model)
    (tmp_path / "CogVideoX" / "transformer" / "diffusion_pytorch_model-00001-of-00002.safetensors").write_bytes(b"")
    (tmp_path / "CogVideoX" / "merged.safetensors").write_bytes(b"")
    folder_paths.filename_list_cache.pop("diffusion_models", None)
    assert bridge.model_entries("diffusion_models") == ["CogVideoX/transformer", "CogVideoX/merged.safetensors",
                                                        "x.safetensors"]


def test_dtypes_and_operations(bridge):
    import comfy.ops

    assert bridge.weight_dtype("fp8_e4m3fn") == torch.float8_e4m3fn
    assert bridge.weight_dtype("bf16") == torch.bfloat16
    assert bridge.weight_dtype("default") == bridge.compute_dtype()
    with pytest.raises(ValueError, match="unknown"):
        bridge.weight_dtype("int4")
    ops = bridge.operations(torch.float8_e4m3fn, torch.float32, torch.device("cpu"))
    assert issubclass(ops, comfy.ops.manual_cast)
    lin = ops.Linear(4, 3, dtype=torch.float8_e4m3fn)
    lin.weight.data = torch.randn(3, 4).to(torch.float8_e4m3fn)
    lin.bias.data = torch.zeros(3).to(torch.float8_e4m3fn)
    x = torch.randn(2, 4)
    torch.testing.assert_close(lin(x), x @ lin.weight.float().t())


def test_default_dtypes_follow_comfyui_precision_flags(bridge, monkeypatch):
    from comfy.cli_args import args

    cpu = torch.device("cpu")
    base = bridge.compute_dtype(cpu)
    assert bridge.dit_dtypes("default", cpu) == (base, base) and bridge.vae_dtype("default", cpu) == base
    monkeypatch.setattr(args, "fp16_unet", True)
    assert bridge.dit_dtypes("default", cpu) == (torch.float16, torch.float16)
    assert bridge.dit_dtypes("bf16", cpu) == (torch.bfloat16, base)  # an explicit choice wins over the flag
    monkeypatch.setattr(args, "fp16_unet", False)
    monkeypatch.setattr(args, "fp8_e4m3fn_unet", True)
    assert bridge.dit_dtypes("default", cpu) == (torch.float8_e4m3fn, base)  # fp8 storage, computed in base
    monkeypatch.setattr(args, "bf16_vae", True)
    assert bridge.vae_dtype("default", cpu) == torch.bfloat16 and bridge.vae_dtype("fp32", cpu) == torch.float32


def test_default_keeps_an_fp8_file_in_fp8_where_comfyui_would(bridge, monkeypatch):
    """'default' on a file stored in fp8: kept in fp8 where ComfyUI's own loaders keep it (fp8 compute, or bf16
    weights would not fit), else bf16 as for any file; a bf16 file is never quantized by default."""
    import comfy.model_management as mm

    gpu = torch.device("cuda", 0)
    fp8 = torch.float8_e4m3fn
    monkeypatch.setattr(mm, "should_use_bf16", lambda *a, **k: True)
    monkeypatch.setattr(mm, "supports_fp8_compute", lambda *a, **k: False)
    monkeypatch.setattr(mm, "maximum_vram_for_weights", lambda *a, **k: 16 * 2 ** 30)
    small, large = 10 ** 9, 6 * 10 ** 9  # bf16: 2 GB, 12 GB
    assert bridge.dit_dtypes("default", gpu, stored=fp8, params=small)[0] == torch.bfloat16
    assert bridge.dit_dtypes("default", gpu, stored=fp8, params=3 * large)[0] == fp8  # 36 GB in bf16
    assert bridge.dit_dtypes("default", gpu, stored=torch.bfloat16, params=3 * large)[0] == torch.bfloat16
    monkeypatch.setattr(mm, "supports_fp8_compute", lambda *a, **k: True)
    assert bridge.dit_dtypes("default", gpu, stored=fp8, params=small)[0] == fp8
    assert bridge.dit_dtypes("bf16", gpu, stored=fp8, params=small)[0] == torch.bfloat16  # an explicit choice wins


def test_no_fp16_compute_by_default_on_gpus_without_bf16(bridge, monkeypatch, caplog):
    """A V100/T4-class GPU (no bf16): ComfyUI would pick fp16, which overflows in CogVideoX-5B. The DiT keeps
    bf16 (or the chosen) storage and computes in fp32; the VAE runs fp32; an explicit --fp16-unet is honoured
    with a warning."""
    import comfy.model_management as mm
    from comfy.cli_args import args

    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(mm, "should_use_bf16", lambda *a, **k: False)
    monkeypatch.setattr(mm, "should_use_fp16", lambda *a, **k: True)
    assert bridge.dit_dtypes("default", gpu) == (torch.bfloat16, torch.float32)
    assert bridge.dit_dtypes("fp8_e4m3fn", gpu) == (torch.float8_e4m3fn, torch.float32)
    assert bridge.dit_dtypes("fp32", gpu) == (torch.float32, torch.float32)
    assert bridge.vae_dtype("default", gpu) == torch.float32
    monkeypatch.setattr(args, "fp16_unet", True)
    with caplog.at_level("WARNING"):
        assert bridge.dit_dtypes("default", gpu) == (torch.float16, torch.float16)
    assert "overflow" in caplog.text
    monkeypatch.setattr(args, "fp16_unet", False)
    for flag, dtype in (("fp32_unet", torch.float32), ("bf16_unet", torch.bfloat16)):
        monkeypatch.setattr(args, flag, True)  # the flag sets the compute dtype too, not only the storage
        assert bridge.dit_dtypes("default", gpu) == (dtype, dtype), flag
        monkeypatch.setattr(args, flag, False)


def test_devices_and_compute_dtype_follow_comfy(bridge, monkeypatch):
    """Each model kind asks ComfyUI's own device functions, so --cpu-vae, --highvram, --gpu-only etc. apply."""
    import comfy.model_management as mm

    names = ("get_torch_device", "unet_offload_device", "text_encoder_device", "text_encoder_offload_device",
             "vae_device", "vae_offload_device")
    marks = {name: torch.device("cpu", i) for i, name in enumerate(names)}  # distinct stand-ins
    for name in names:
        monkeypatch.setattr(mm, name, lambda name=name: marks[name])
    assert bridge.load_device("unet") == marks["get_torch_device"] == bridge.torch_device()
    assert bridge.load_device("text") == marks["text_encoder_device"]
    assert bridge.load_device("vae") == marks["vae_device"]
    assert bridge.offload_device("unet") == marks["unet_offload_device"]
    assert bridge.offload_device("text") == marks["text_encoder_offload_device"]
    assert bridge.offload_device("vae") == marks["vae_offload_device"]
    gpu = torch.device("cuda", 0)
    for bf16, fp16, want in ((True, True, torch.bfloat16), (False, True, torch.float16), (False, False, torch.float32)):
        monkeypatch.setattr(mm, "should_use_bf16", lambda *a, v=bf16, **k: v)
        monkeypatch.setattr(mm, "should_use_fp16", lambda *a, v=fp16, **k: v)
        assert bridge.compute_dtype(gpu) == want  # bf16 first: the reference runs bf16


def test_wrap_transformers_model_and_load(bridge):
    import transformers
    cfg = transformers.T5Config(vocab_size=8, d_model=8, d_kv=2, d_ff=8, num_layers=1, num_heads=2)
    m = transformers.T5EncoderModel(cfg)
    p = bridge.wrap(m, kind="text")
    bridge.load_gpu(p)
    assert bridge.unwrap(p) is m
    plain = torch.nn.Linear(2, 2)
    assert bridge.unwrap(bridge.wrap(plain)) is plain


def test_only_comfy_ops_models_load_partially(bridge, monkeypatch):
    """Plain torch modules (T5, SigLIP, VAE) must load fully: a partially loaded plain module would keep some
    layers on the offload device. The DiT (comfy.ops layers) may stream weights."""
    import comfy.model_management as mm

    calls = []
    monkeypatch.setattr(mm, "load_models_gpu", lambda models, **kw: calls.append(
        ([type(bridge.unwrap(m)).__name__ for m in models], kw.get("force_full_load", False),
         kw.get("memory_required"))))
    ops = bridge.operations(torch.float32, torch.float32, torch.device("cpu"))
    dit_like = bridge.wrap(torch.nn.Sequential(ops.Linear(2, 2)))
    plain = bridge.wrap(torch.nn.Linear(2, 2), kind="vae")
    bridge.load_gpu([dit_like, plain], memory_required=5)
    # both paths ask ComfyUI to free room for the activations too, not only the weights
    assert sorted(calls) == [(["Linear"], True, 5), (["Sequential"], False, 5)]
    calls.clear()
    bridge.unwrap(dit_like).compiled_with = "inductor"  # a compiled DiT would recompile per streaming pattern
    bridge.load_gpu(dit_like, memory_required=7)
    assert calls == [(["Sequential"], True, 7)]


def test_compiled_dit_that_cannot_fit_whole_is_refused_before_loading(bridge, monkeypatch):
    """A compiled DiT loads whole: one whose weights and work exceed the GPU is refused with what to change,
    before ComfyUI is asked to load it; one that fits loads."""
    import comfy.model_management as mm

    GiB = 2 ** 30
    calls = []
    monkeypatch.setattr(mm, "load_models_gpu", lambda models, **kw: calls.append(kw.get("force_full_load")))
    monkeypatch.setattr(mm, "get_total_memory", lambda dev=None, torch_total_too=False: 16 * GiB)
    ops = bridge.operations(torch.float32, torch.float32, torch.device("cpu"))
    dit = bridge.wrap(torch.nn.Sequential(ops.Linear(2, 2)), size=12 * GiB)
    dit.load_device = torch.device("cuda", 0)
    bridge.unwrap(dit).compiled_with = "inductor"
    bridge.load_gpu(dit, memory_required=4 * GiB)  # 12 + 4 <= 16
    assert calls == [True]
    with pytest.raises(bridge.CompiledModelTooLarge, match=r"compiled DiT loads whole, and its 12.0 GiB of weights and 4.5 GiB of work "
                                         r"exceed the 16.0 GiB of cuda:0: remove EchoVideo Compile Settings.*fp8"):
        bridge.load_gpu(dit, memory_required=int(4.5 * GiB))
    assert calls == [True]
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.NO_VRAM)  # --novram streams every model: no check
    bridge.load_gpu(dit, memory_required=int(4.5 * GiB))
    assert calls == [True, True]
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.NORMAL_VRAM)
    bridge.unwrap(dit).weight_dtype = torch.float8_e4m3fn  # already fp8: not told to pick fp8
    with pytest.raises(bridge.CompiledModelTooLarge) as refused:
        bridge.load_gpu(dit, memory_required=int(4.5 * GiB))
    assert "fp8" not in str(refused.value)
    bridge.unwrap(dit).compiled_with = None  # uncompiled, it streams: no check
    bridge.load_gpu(dit, memory_required=int(4.5 * GiB))
    assert calls == [True, True, None]


def test_plain_model_too_big_for_the_gpu_runs_on_its_offload_device(bridge, monkeypatch, caplog):
    """A plain-torch model (T5, SigLIP, VAE) whose weights cannot fit whole on the GPU beside ComfyUI's work
    reserve, or any under --novram, is set at wrap time to run where it is offloaded (it never goes to the
    GPU), with a warning saying why; one that fits, a comfy.ops model (which streams), --gpu-only and DirectML
    keep the GPU."""
    import comfy.model_management as mm

    GiB = 2 ** 30
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(bridge, "load_device", lambda kind="unet": gpu)
    monkeypatch.setattr(mm, "get_total_memory", lambda dev=None, torch_total_too=False: 8 * GiB)
    monkeypatch.setattr(mm, "minimum_inference_memory", lambda: GiB)
    with caplog.at_level("WARNING", logger="EchoVideo"):
        fits = bridge.wrap(torch.nn.Linear(2, 2), kind="text", size=7 * GiB)  # 7 + 1 <= 8
        too_big = bridge.wrap(torch.nn.Linear(2, 2, dtype=torch.bfloat16), kind="text", size=7 * GiB + 1)
    assert fits.load_device == gpu and too_big.load_device == too_big.offload_device == torch.device("cpu")
    (record,) = caplog.records
    assert record.getMessage().startswith("EchoVideo: Linear runs on cpu in bfloat16 (slower): its 7.0 GiB")
    assert "exceed the 8.0 GiB of cuda:0" in record.getMessage()
    bridge.load_gpu(too_big)  # ComfyUI then "loads" it where it runs
    assert bridge.unwrap(too_big).weight.device.type == "cpu"

    ops = bridge.operations(torch.float32, torch.float32, torch.device("cpu"))
    assert bridge.wrap(torch.nn.Sequential(ops.Linear(2, 2)), size=100 * GiB).load_device == gpu
    caplog.clear()
    with caplog.at_level("WARNING", logger="EchoVideo"):
        monkeypatch.setattr(mm, "directml_enabled", True)  # reports a made-up 1 GiB total: no judgement
        assert bridge.wrap(torch.nn.Linear(2, 2), size=9 * GiB).load_device == gpu
        monkeypatch.setattr(mm, "directml_enabled", False)
        monkeypatch.setattr(bridge, "offload_device", lambda kind="unet": gpu)  # --gpu-only
        assert bridge.wrap(torch.nn.Linear(2, 2), size=9 * GiB).load_device == gpu
    assert not caplog.records
    monkeypatch.undo()

    monkeypatch.setattr(bridge, "load_device", lambda kind="unet": gpu)
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.NO_VRAM)
    with caplog.at_level("WARNING", logger="EchoVideo"):
        small = bridge.wrap(torch.nn.Linear(2, 2), kind="vae", size=GiB)
    assert small.load_device == torch.device("cpu") and "ComfyUI runs with --novram" in caplog.records[-1].getMessage()


def test_t5_dtype_follows_flags_and_never_substitutes(bridge, monkeypatch):
    from comfy.cli_args import args

    assert bridge.t5_dtype(torch.device("cpu")) == torch.bfloat16  # the reference's dtype
    monkeypatch.setattr(args, "fp16_text_enc", True)
    assert bridge.t5_dtype(torch.device("cpu")) == torch.float16
    monkeypatch.setattr(args, "fp16_text_enc", False)
    monkeypatch.setattr(args, "fp8_e4m3fn_text_enc", True)
    with pytest.raises(ValueError, match="fp8 text-encoder flag.*precision to bf16"):
        bridge.t5_dtype(torch.device("cpu"))


def test_progress_reports_steps_and_previews(bridge, monkeypatch):
    import comfy.utils
    from comfy.cli_args import LatentPreviewMethod, args

    calls = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda v, t, preview, node_id=None: calls.append((v, t, preview)))
    monkeypatch.setattr(args, "preview_method", LatentPreviewMethod.Latent2RGB)
    prog = bridge.Progress(3)
    prog(1, 3, torch.randn(1, 2, 16, 6, 8))
    prog(2, 3)
    assert calls[0][0] == 1 and calls[0][2][0] == "JPEG" and calls[0][2][1].size == (32, 24)
    assert calls[1] == (2, 3, None)
    monkeypatch.setattr(args, "preview_method", LatentPreviewMethod.NoPreviews)
    calls.clear()
    bridge.Progress(1)(1, 1, torch.randn(1, 1, 16, 4, 4))
    assert calls == [(1, 1, None)]


def test_interrupt(bridge):
    import comfy.model_management as mm

    bridge.check_interrupt()
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            bridge.check_interrupt()
    finally:
        mm.interrupt_current_processing(False)


def test_unload_hook_releases_face_models(bridge, monkeypatch):
    import comfy.model_management as mm
    import echovideo.face

    released = []
    monkeypatch.setattr(echovideo.face, "release_face_models", lambda: released.append(1))
    bridge.install_unload_hook()
    bridge.install_unload_hook()  # once only
    assert getattr(mm.unload_all_models, "_echovideo_release_hook", False)
    mm.unload_all_models()
    assert released == [1]


def test_entrypoint_lists_documented_nodes():
    import asyncio

    pack = comfy_env.load_pack()
    ext = asyncio.run(pack.comfy_entrypoint())
    nodes = asyncio.run(ext.get_node_list())
    ids = []
    for cls in nodes:
        s = cls.GET_SCHEMA()
        ids.append(s.node_id)
        assert s.category == "EchoVideo" and s.description and s.display_name.startswith("EchoVideo ")
        for i in s.inputs:
            assert i.tooltip, f"{s.node_id}.{i.id} has no tooltip"
    assert sorted(ids) == sorted([
        "EchoVideoT5Loader", "EchoVideoTextEncode", "EchoVideoModelLoader", "EchoVideoVAELoader",
        "EchoVideoFaceEncoderLoader", "EchoVideoFaceEncode", "EchoVideoIITFFusion", "EchoVideoFaceFrameEncode",
        "EchoVideoSampler", "EchoVideoVAEDecode", "EchoVideoCompileSettings", "EchoVideoStepCache"])
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS")  # V1 mappings would win over the V3 entrypoint


def test_model_file_extensions_match_in_any_case(bridge, tmp_path, monkeypatch):
    """MODEL.SAFETENSORS / x.Sft are listed and resolved like lower-case names; other extensions are not."""
    import folder_paths

    for name in ("MODEL.SAFETENSORS", "b.Safetensors", "c.Sft", "d.ckpt"):
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "diffusion_models",
                        ([str(tmp_path)], {".safetensors", ".sft", ".ckpt"}))
    folder_paths.filename_list_cache.pop("diffusion_models", None)
    assert bridge.file_list("diffusion_models") == ["MODEL.SAFETENSORS", "b.Safetensors", "c.Sft"]
    assert bridge.model_entries("diffusion_models") == ["MODEL.SAFETENSORS", "b.Safetensors", "c.Sft"]
    assert bridge.file_list("diffusion_models", (".ckpt",)) == ["d.ckpt"]
    assert bridge.resolve_entry("diffusion_models", "MODEL.SAFETENSORS") == str(tmp_path / "MODEL.SAFETENSORS")
    folder_paths.filename_list_cache.pop("diffusion_models", None)


def test_resolve_entry_refuses_names_outside_the_model_folders(bridge, tmp_path, monkeypatch):
    """'..' or an absolute path naming a model that really exists outside the folder is refused, not loaded."""
    import folder_paths

    root = tmp_path / "models"
    (root / "inside").mkdir(parents=True)
    (root / "inside" / "config.json").write_text("{}")
    outside = tmp_path / "outside"  # a diffusers-layout folder next to the models root
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    (tmp_path / "outside.safetensors").write_bytes(b"")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "diffusion_models", ([str(root)], {".safetensors"}))
    folder_paths.filename_list_cache.pop("diffusion_models", None)
    assert bridge.resolve_entry("diffusion_models", "inside") == str(root / "inside")
    for name in ("../outside", str(outside), "inside/../../outside", "../outside.safetensors",
                 str(tmp_path / "outside.safetensors")):
        with pytest.raises(FileNotFoundError, match=r"EchoVideo: model '.*outside.*' not found in the "
                                                    r"'diffusion_models' folders; searched: " + str(root)):
            bridge.resolve_entry("diffusion_models", name)


def test_latent_preview_shows_the_middle_frame(bridge):
    """The preview is the middle latent frame (frame 0 is the face frame) through the CogVideoX latent-to-RGB
    factors, 4x nearest upscale."""
    import numpy as np

    from echovideo.preview import COGVIDEOX_LATENT_RGB_FACTORS

    lat = torch.zeros(1, 5, 16, 3, 4)
    lat[0, 2, 11, 0, 0] = 2.0  # one latent channel at one pixel of the middle frame
    lat[0, 0] = torch.randn(16, 3, 4) * 5  # the face frame is not shown
    img = np.asarray(bridge.latent_preview_image(lat))
    assert img.shape == (12, 16, 3)
    colour = [round((1 + 2.0 * f) / 2 * 255) for f in COGVIDEOX_LATENT_RGB_FACTORS[11]]
    assert img[:4, :4].reshape(-1, 3).tolist() == [colour] * 16
    assert set(map(tuple, img[4:].reshape(-1, 3).tolist())) == {(128, 128, 128)}  # a zero latent is mid-grey


def test_missing_model_error_survives_a_missing_face_package(bridge, monkeypatch):
    """Without opencv (a failed requirements install), a loader's file-not-found error still names the folders
    searched and the other missing models, and says which package the face pipeline lacks."""
    def no_cv2():
        raise ImportError("No module named 'cv2'")

    monkeypatch.setattr(bridge, "face_model_dirs", no_cv2)
    monkeypatch.setattr(bridge, "model_entries", lambda folder: [])
    with pytest.raises(FileNotFoundError) as e:
        bridge.resolve("diffusion_models", "echo.safetensors")
    msg = str(e.value)
    assert "model 'echo.safetensors' not found in the 'diffusion_models' folders" in msg, msg
    assert "the CogVideoX VAE (models/vae)" in msg
    assert "the face pipeline's Python packages (No module named 'cv2'; install the pack's requirements.txt)" in msg


def test_shard_index_marks_a_model_folder_at_any_depth(bridge, tmp_path, monkeypatch):
    """The released shards + index without config.json, and a Hugging Face cache snapshot, are offered as one
    folder each; their shards are not offered on their own."""
    import folder_paths

    shards = [f"diffusion_pytorch_model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    hf = "hub/models--bytedance-research--EchoVideo/snapshots/abc123/transformer"
    for sub in ("EchoVideo", hf):
        (tmp_path / sub).mkdir(parents=True)
        (tmp_path / sub / "diffusion_pytorch_model.safetensors.index.json").write_text("{}")
        for name in shards:
            (tmp_path / sub / name).write_bytes(b"")
    (tmp_path / hf / "config.json").write_text("{}")
    (tmp_path / "loose").mkdir()  # shards without an index or config.json stay files
    (tmp_path / "loose" / shards[0]).write_bytes(b"")
    vae = "hub/models--THUDM--CogVideoX-5b/snapshots/abc123/vae"  # deep, one file, no index: the file stays listed
    (tmp_path / vae).mkdir(parents=True)
    (tmp_path / vae / "config.json").write_text("{}")
    (tmp_path / vae / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "diffusion_models", ([str(tmp_path)], {".safetensors"}))
    folder_paths.filename_list_cache.pop("diffusion_models", None)
    assert bridge.model_entries("diffusion_models") == ["EchoVideo", hf, f"{vae}/diffusion_pytorch_model.safetensors",
                                                        f"loose/{shards[0]}"]
    assert bridge.resolve_entry("diffusion_models", hf) == str(tmp_path / hf)


def test_model_loader_names_the_cut_shard(tmp_path, monkeypatch):
    """A released transformer/ folder with a shard cut short: the Model Loader names that shard and the fix."""
    import folder_paths

    from echovideo import tiny
    from echovideo.errors import CheckpointError

    mn = comfy_env.pack_module("nodes.model_nodes")
    model = tiny.tiny_dit(tiny.PRESETS["shared"])
    folder = tmp_path / "transformer"
    comfy_env.write_diffusers_folder(model.state_dict(), model.config.to_dict(), str(folder))
    cut = folder / "diffusion_pytorch_model-00002-of-00002.safetensors"
    cut.write_bytes(cut.read_bytes()[:-1000])
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "diffusion_models", ([str(tmp_path)], {".safetensors"}))
    folder_paths.filename_list_cache.pop("diffusion_models", None)
    with pytest.raises(CheckpointError, match="^" + re.escape(f"EchoVideo Model Loader: {cut}: cannot be read (") +
                       r".*\); the file is incomplete or damaged: download it again$"):
        comfy_env.run_node(mn.ModelLoader, model_name="transformer", weight_dtype="fp32", attention="sdpa")


def test_face_model_dirs_takes_the_first_complete_folder(tmp_path, monkeypatch):
    """A facexlib folder with only one of the two files (e.g. another pack's detection_Resnet50_Final.pth +
    parsing_parsenet.pth) is passed over for one that holds both; with no complete folder, none."""
    bridge = comfy_env.pack_module("nodes.bridge")  # puts ComfyUI on the path first
    import folder_paths

    partial, full = tmp_path / "other_pack", tmp_path / "ours"
    for d in (partial, full):
        d.mkdir()
        (d / "detection_Resnet50_Final.pth").write_bytes(b"x")
    (partial / "parsing_parsenet.pth").write_bytes(b"x")
    (full / "parsing_bisenet.pth").write_bytes(b"x")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "facexlib", ([str(partial), str(full)], {".pth"}))
    assert bridge.face_model_dirs()[1] == str(full)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "facexlib", ([str(partial)], {".pth"}))
    assert bridge.face_model_dirs()[1] is None


def test_model_lists_skip_unreadable_folders_and_open_the_root_that_holds_the_model(bridge, tmp_path, monkeypatch):
    """A folder that cannot be read is left out (not the whole list lost); a model folder listed from a second
    models root is opened there, not at an empty folder of the same name in the first root."""
    import folder_paths

    first, second = tmp_path / "a", tmp_path / "b"
    (first / "EchoVideo").mkdir(parents=True)  # empty namesake
    (first / "private").mkdir()
    (second / "EchoVideo").mkdir(parents=True)
    (second / "EchoVideo" / "config.json").write_text("{}")
    (second / "EchoVideo" / "w.safetensors").write_bytes(b"")
    real_listdir = os.listdir

    def refusing_listdir(path="."):
        if str(path) == str(first / "private"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", refusing_listdir)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "diffusion_models",
                        ([str(first), str(second)], {".safetensors"}))
    folder_paths.filename_list_cache.pop("diffusion_models", None)
    assert bridge.model_entries("diffusion_models") == ["EchoVideo"]
    assert bridge.resolve_entry("diffusion_models", "EchoVideo") == str(second / "EchoVideo")


def test_show_text_on_node_sends_comfyui_progress_text(bridge, monkeypatch):
    """The running server's progress text for the node's id; nothing (no error) when no server was started."""
    server = types.ModuleType("server")  # ComfyUI's server module, as main.py has it loaded
    server.PromptServer = type("PromptServer", (), {})  # no instance: no server was started
    monkeypatch.setitem(sys.modules, "server", server)
    bridge.show_text_on_node("7", "hello")
    sent = []
    server.PromptServer.instance = types.SimpleNamespace(
        send_progress_text=lambda text, node_id: sent.append((node_id, text)))
    bridge.show_text_on_node("7", "hello")
    bridge.show_text_on_node(None, "no node id: not sent")
    assert sent == [("7", "hello")]
