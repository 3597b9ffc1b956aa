"""The one module that imports ComfyUI. Nodes talk to ComfyUI only through here.

Folders, file resolution, devices/dtypes, ModelPatcher wrapping and loading, casting ops,
progress + latent previews, interrupts, and the unload hook for the face-model cache.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Iterable, List, Optional

import torch

import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import comfy.utils
import folder_paths
from comfy_api.latest import ComfyExtension, io  # noqa: F401  (re-exported for the node modules)

log = logging.getLogger("EchoVideo")

README_HINT = "see the README model table"

# folder name -> (default subfolder of models/, extensions; empty set = any file or folder)
MODEL_FOLDERS = {
    "insightface": ("insightface", set()),
    "facexlib": ("facexlib", {".pth", ".safetensors", ".onnx"}),
    "clip_vision": ("clip_vision", set(folder_paths.supported_pt_extensions)),
}
SAFETENSORS = (".safetensors", ".sft")


# ---------------------------------------------------------------- folders

def register_model_folders() -> None:
    """Add our model folders, keeping paths that extra_model_paths.yaml already added (it is read first)."""
    for name, (sub, exts) in MODEL_FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, sub)
        entry = folder_paths.folder_names_and_paths.get(name)
        if entry is None:
            folder_paths.folder_names_and_paths[name] = ([default], set(exts))
            continue
        paths, known = entry
        if default not in paths:
            paths.append(default)
        if isinstance(known, set) and exts:
            known.update(exts)


def folders(name: str) -> List[str]:
    try:
        return folder_paths.get_folder_paths(name)
    except KeyError:
        return []


def file_list(name: str, extensions: Iterable[str] = SAFETENSORS) -> List[str]:
    """Files under a model folder, filtered by extension (safetensors by default)."""
    try:
        names = folder_paths.get_filename_list(name)
    except KeyError:
        return []
    exts = tuple(extensions)
    return [n for n in names if not exts or n.lower().endswith(exts)]


def listed(path: str) -> List[str]:
    """A folder's names; [] for one that cannot be read (one private folder must not empty a loader's list)."""
    try:
        return os.listdir(path)
    except OSError:
        return []


def has_shard_index(path: str) -> bool:
    return any(n.endswith(".safetensors.index.json") for n in listed(path))


def is_model_folder(path: str) -> bool:
    """config.json or a shard index (*.safetensors.index.json) marks a folder the loaders take whole."""
    return os.path.isdir(path) and (os.path.isfile(os.path.join(path, "config.json")) or has_shard_index(path))


def model_folders(name: str) -> List[str]:
    """Model folders (relative names) in a model folder: one or two levels deep (e.g. CogVideoX-5b/text_encoder),
    or deeper when they hold a shard index (a Hugging Face cache's models--org--name/snapshots/<hash>/transformer;
    a deeper folder's single weight file stays listed as the file, as it always was)."""
    weight_dirs = {os.path.dirname(f.replace(os.sep, "/")) for f in file_list(name)} - {""}
    found = set()
    for root in folders(name):
        if not os.path.isdir(root):
            continue
        shallow = [d for d in listed(root) if os.path.isdir(os.path.join(root, d))]
        shallow += [f"{d}/{d2}" for d in shallow for d2 in listed(os.path.join(root, d))]
        found.update(d for d in shallow if is_model_folder(os.path.join(root, d)))
        found.update(d for d in weight_dirs if os.path.isdir(os.path.join(root, d))
                     and has_shard_index(os.path.join(root, d)))
    return sorted(found)


def model_entries(name: str) -> List[str]:
    """Loader choices: model folders and single files, without the files inside those folders (a shard of a
    folder is not a model on its own)."""
    dirs = model_folders(name)
    inside = tuple(d + "/" for d in dirs)
    return dirs + [f for f in file_list(name) if not f.replace(os.sep, "/").startswith(inside)]


PACK_MODEL_FOLDERS = (("diffusion_models", "the EchoVideo transformer"), ("vae", "the CogVideoX VAE"),
                      ("text_encoders", "T5-XXL"), ("clip_vision", "SigLIP"))


def face_model_dirs():
    """(the first insightface folder holding models/antelopev2's two files, the first facexlib folder holding
    both .pth files), each None when no folder has them."""
    from echovideo.face import BISENET_FILE, DETECTOR_FILE, RECOGNIZER_FILE, RETINAFACE_FILE

    root = next((r for r in folders("insightface")
                 if all(os.path.isfile(os.path.join(r, "models", "antelopev2", f))
                        for f in (DETECTOR_FILE, RECOGNIZER_FILE))), None)
    fdir = next((d for d in folders("facexlib")
                 if all(os.path.isfile(os.path.join(d, f)) for f in (RETINAFACE_FILE, BISENET_FILE))), None)
    return root, fdir


def missing_pack_models(exclude: Iterable[str] = ()) -> List[str]:
    """The pack's models with nothing at all in their folders (folder names in `exclude` are skipped), so that
    one error can name everything a fresh install still lacks, not one loader at a time."""
    exclude = set(exclude)
    missing = [f"{what} (models/{name})" for name, what in PACK_MODEL_FOLDERS
               if name not in exclude and not model_entries(name)]
    try:
        root, fdir = face_model_dirs()
    except ImportError as e:  # e.g. opencv missing after a failed requirements install: still name the rest
        missing.append(f"the face pipeline's Python packages ({e}; install the pack's requirements.txt)")
        return missing
    if root is None and "insightface" not in exclude:
        missing.append("insightface antelopev2 (models/insightface/models/antelopev2)")
    if fdir is None and "facexlib" not in exclude:
        missing.append("facexlib RetinaFace + BiSeNet (models/facexlib)")
    return missing


def also_missing(exclude: Iterable[str] = ()) -> str:
    missing = missing_pack_models(exclude)
    return f" Also missing, for the other EchoVideo loaders: {'; '.join(missing)}." if missing else ""


def _not_found(name: str, what: str) -> FileNotFoundError:
    searched = folders(what) or [f"(no '{what}' folder registered)"]
    return FileNotFoundError(
        f"EchoVideo: model '{name}' not found in the '{what}' folders; searched: {', '.join(searched)}. "
        f"Put the file there (or add a path in extra_model_paths.yaml) -- {README_HINT}.{also_missing([what])}")


def resolve(what: str, name: str) -> str:
    """Full path of a file in a model folder, or a FileNotFoundError naming the folders searched."""
    if not name:
        raise _not_found("(none selected)", what)
    path = folder_paths.get_full_path(what, name)
    if path is None:
        raise _not_found(name, what)
    return path


def resolve_entry(what: str, name: str) -> str:
    """A subfolder (diffusers/transformers layout) or a file in a model folder."""
    rel = os.path.normpath(name or "")
    if name and not rel.startswith("..") and not os.path.isabs(rel):
        dirs = [os.path.join(root, rel) for root in folders(what) if os.path.isdir(os.path.join(root, rel))]
        if dirs:  # the root that holds the model, as the list found it, before an empty namesake
            return next((d for d in dirs if is_model_folder(d)), dirs[0])
    return resolve(what, name)


def comfy_t5_tokenizer_dir() -> str:
    """ComfyUI's shipped T5 tokenizer folder (the same tokenizer the reference uses)."""
    import comfy.text_encoders.t5  # noqa: F401  (module location anchors the folder)

    return os.path.join(os.path.dirname(os.path.realpath(comfy.text_encoders.t5.__file__)), "t5_tokenizer")


def find_comfy_t5(clip):
    """(SDClipModel, comfy T5 module) inside a core CLIP object, or None."""
    import comfy.text_encoders.t5 as t5mod

    for m in clip.cond_stage_model.modules():
        tr = getattr(m, "transformer", None)
        if isinstance(tr, t5mod.T5):
            return m, tr
    return None


# ---------------------------------------------------------------- devices / dtypes

def torch_device() -> torch.device:
    return mm.get_torch_device()


def offload_device(kind: str = "unet") -> torch.device:
    return {"unet": mm.unet_offload_device, "text": mm.text_encoder_offload_device,
            "vae": mm.vae_offload_device}.get(kind, mm.unet_offload_device)()


def load_device(kind: str = "unet") -> torch.device:
    return {"text": mm.text_encoder_device, "vae": mm.vae_device}.get(kind, mm.get_torch_device)()


def intermediate_device() -> torch.device:
    return mm.intermediate_device()


WEIGHT_DTYPES = {"default": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
                 "fp8_e4m3fn": getattr(torch, "float8_e4m3fn", None), "fp8_e5m2": getattr(torch, "float8_e5m2", None)}
PRECISIONS = ["default", "bf16", "fp16", "fp32"]  # the VAE and T5 loaders' choices: WEIGHT_DTYPES without fp8


def compute_dtype(device=None, model_params: int = 0) -> torch.dtype:
    """bf16 where the device supports it (the reference runs bf16), else fp16, else fp32."""
    device = device if device is not None else torch_device()
    if mm.should_use_bf16(device, model_params=model_params, prioritize_performance=False):
        return torch.bfloat16
    if mm.should_use_fp16(device, model_params=model_params, prioritize_performance=False):
        return torch.float16
    return torch.float32


def video_compute_dtype(device=None) -> torch.dtype:
    """The DiT's and VAE's compute dtype: bf16 where the device has it (the model runs in bf16), else fp32 --
    never fp16 by default: CogVideoX-5B overflows in fp16 (NaN / black frames)."""
    device = device if device is not None else torch_device()
    return torch.bfloat16 if mm.should_use_bf16(device, prioritize_performance=False) else torch.float32


def _flag_dtype(flags) -> Optional[str]:
    """The WEIGHT_DTYPES name of the first ComfyUI precision flag set on the command line, else None."""
    from comfy.cli_args import args

    return next((name for flag, name in flags if getattr(args, flag, False)), None)


UNET_FLAGS = (("fp32_unet", "fp32"), ("bf16_unet", "bf16"), ("fp16_unet", "fp16"),
              ("fp8_e4m3fn_unet", "fp8_e4m3fn"), ("fp8_e5m2_unet", "fp8_e5m2"))
VAE_FLAGS = (("fp32_vae", "fp32"), ("bf16_vae", "bf16"), ("fp16_vae", "fp16"))
TEXT_FLAGS = (("fp16_text_enc", "fp16"), ("bf16_text_enc", "bf16"), ("fp32_text_enc", "fp32"),
              ("fp8_e4m3fn_text_enc", "fp8_e4m3fn"), ("fp8_e5m2_text_enc", "fp8_e5m2"))


def dit_dtypes(choice: str, device=None, stored: Optional[torch.dtype] = None, params: int = 0):
    """(storage, compute) dtypes of the DiT for the loader's weight_dtype combo. 'default' follows ComfyUI's
    --fp32/--bf16/--fp16/--fp8_e4m3fn/--fp8_e5m2-unet flag when given; else a file `stored` in fp8 stays fp8
    where ComfyUI's own loaders keep it (fp8 compute, or bf16 weights of `params` elements would not fit), and
    everything else is stored in bf16 (fp32 on CPU). Computes in video_compute_dtype unless a fp32/bf16/fp16
    flag asks for that dtype."""
    device = device if device is not None else load_device("unet")
    flag = _flag_dtype(UNET_FLAGS) if choice == "default" else None
    name = flag or choice
    if name == "default":
        weight = torch.float32 if mm.is_device_cpu(device) else torch.bfloat16
        from echovideo.ops import is_fp8

        if stored is not None and is_fp8(stored) and mm.unet_dtype(
                device, params, [torch.bfloat16, torch.float32], weight_dtype=stored) == stored:
            weight = stored
    else:
        weight = weight_dtype(name, device)
    compute = weight if flag in ("fp32", "bf16", "fp16") else video_compute_dtype(device)
    if compute == torch.float16:
        log.warning("EchoVideo: the DiT computes in fp16 (--fp16-unet); CogVideoX-5B can overflow in fp16 "
                    "(NaN or black frames). bf16 or fp32 is safer.")
    return weight, compute


def vae_dtype(choice: str, device=None) -> torch.dtype:
    """VAE dtype for the loader's precision combo; 'default' follows --fp32/--bf16/--fp16-vae when given,
    else video_compute_dtype (bf16 or fp32, never fp16)."""
    name = (_flag_dtype(VAE_FLAGS) or "default") if choice == "default" else choice
    return video_compute_dtype(device) if name == "default" else weight_dtype(name, device)


def weight_dtype(choice: str, device=None) -> torch.dtype:
    """Storage dtype for a weight-dtype combo value; 'default' = the compute dtype."""
    if choice not in WEIGHT_DTYPES:
        raise ValueError(f"EchoVideo: weight dtype {choice!r} unknown; choose one of {list(WEIGHT_DTYPES)}")
    d = WEIGHT_DTYPES[choice]
    if choice != "default" and d is None:
        raise ValueError(f"EchoVideo Model Loader: weight_dtype {choice} needs a torch with {choice} (2.1 or "
                         "newer); pick default, bf16 or fp16, or update torch")
    return d if d is not None else compute_dtype(device)


def operations(weight: torch.dtype, compute: torch.dtype, device=None):
    """ComfyUI layer ops: per-layer casting (fp8 storage, lowvram partial loading)."""
    return comfy.ops.pick_operations(weight, compute, load_device=device)


def t5_dtype(device=None) -> torch.dtype:
    """ComfyUI's --fp16/--bf16/--fp32-text-enc when given; else bf16 (the reference's) where the device has it,
    else fp16 (the T5 loader keeps the overflow-prone `wo` layers in fp32)."""
    flag = _flag_dtype(TEXT_FLAGS)
    if flag is not None and not flag.startswith("fp8"):
        return WEIGHT_DTYPES[flag]
    if flag is not None:
        raise ValueError("EchoVideo T5 Loader: ComfyUI runs with an fp8 text-encoder flag, which this loader "
                         "cannot store. Set precision to bf16, fp16 or fp32, or load t5xxl_fp8_e4m3fn.safetensors "
                         "with the core Load CLIP node into Text Encode's clip input.")
    device = device if device is not None else load_device("text")
    if mm.is_device_cpu(device) or mm.should_use_bf16(device, prioritize_performance=False):
        return torch.bfloat16
    return torch.float16


def cfg1_optimization_disabled(patcher) -> bool:
    """ComfyUI's model option that keeps the unconditional pass at guidance scale 1 (its samplers skip it)."""
    return bool(getattr(patcher, "model_options", {}).get("disable_cfg1_optimization", False))


# ---------------------------------------------------------------- model patchers

class ModuleHolder(torch.nn.Module):
    """Holds a module whose class has a read-only `device` (transformers models); ModelPatcher sets one."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner


def wrap(module: torch.nn.Module, kind: str = "unet", size: int = 0):
    """ModelPatcher so ComfyUI's model management loads/offloads the module (unwrap() gives it back). A
    plain-torch model whose weights cannot fit whole on the GPU is set to run on its offload device."""
    if isinstance(getattr(type(module), "device", None), property):
        module = ModuleHolder(module)
    patcher = comfy.model_patcher.ModelPatcher(module, load_device=load_device(kind),
                                               offload_device=offload_device(kind), size=size)
    if not has_cast_layers(patcher) and not weights_fit(patcher):
        run_on_offload_device(patcher)
    return patcher


def gpu_memory_is_limited(patcher) -> bool:
    """False on the CPU, under --gpu-only (offload device = load device) and on DirectML (which reports no real
    memory size): there a model always counts as fitting."""
    device = patcher.load_device
    return not (device.type == "cpu" or device == patcher.offload_device or mm.directml_enabled)


def weights_fit(patcher) -> bool:
    """Whether a plain-torch model's weights fit whole on its load device beside ComfyUI's minimum work memory
    (never under --novram; always where gpu_memory_is_limited is False)."""
    device = patcher.load_device
    if not gpu_memory_is_limited(patcher):
        return True
    if mm.vram_state == mm.VRAMState.NO_VRAM:
        return False
    return patcher.model_size() + mm.minimum_inference_memory() <= mm.get_total_memory(device)


def run_on_offload_device(patcher) -> None:
    """Set before any load, so the model never goes to the GPU: ComfyUI's own layers would stream their
    weights there, these (T5, SigLIP, VAE) cannot, and loading them whole would run out of memory."""
    device, model = patcher.load_device, unwrap(patcher)
    name = type(model).__name__
    dtype = next((p.dtype for p in model.parameters()), None)
    why = ("ComfyUI runs with --novram" if mm.vram_state == mm.VRAMState.NO_VRAM else
           f"its {patcher.model_size() / 2 ** 30:.1f} GiB of weights and ComfyUI's "
           f"{mm.minimum_inference_memory() / 2 ** 30:.1f} GiB work reserve exceed the "
           f"{mm.get_total_memory(device) / 2 ** 30:.1f} GiB of {device}")
    patcher.load_device = patcher.offload_device
    log.warning("EchoVideo: %s runs on %s in %s (slower): %s, and its layers cannot stream to the GPU.%s", name,
                patcher.offload_device, str(dtype).replace("torch.", ""), why,
                " The core Load CLIP node's T5-XXL streams instead." if "T5" in name else "")


def unwrap(patcher) -> torch.nn.Module:
    m = patcher.model
    return m.inner if isinstance(m, ModuleHolder) else m


def has_cast_layers(patcher) -> bool:
    """True when the module is built from comfy.ops layers, which run with their weights left offloaded."""
    return any(hasattr(m, "comfy_cast_weights") for m in patcher.model.modules())


def may_load_partially(patcher) -> bool:
    """Models built from comfy.ops layers (the DiT) may leave weights offloaded -- unless torch.compiled: each
    new mix of streamed and resident layers would recompile the block (and past the recompile limit run
    uncompiled). Plain torch modules (T5, SigLIP, VAE) never: a layer left behind meets inputs elsewhere."""
    return has_cast_layers(patcher) and getattr(unwrap(patcher), "compiled_with", None) is None


class CompiledModelTooLarge(ValueError):
    """A compiled DiT that cannot load whole on the GPU."""


def check_compiled_fits(patcher, memory_required: int) -> None:
    """A compiled DiT loads whole (may_load_partially): refuse, before loading, one whose weights and work
    cannot fit on the GPU even with every other model unloaded, instead of running out of memory mid-run.
    (--novram streams every model, compiled or not.)"""
    if not gpu_memory_is_limited(patcher) or mm.vram_state == mm.VRAMState.NO_VRAM:
        return
    device = patcher.load_device
    need, total = patcher.model_size() + memory_required, mm.get_total_memory(device)
    if need > total:
        weight_dtype = getattr(unwrap(patcher), "weight_dtype", None)
        fp8 = "" if weight_dtype is not None and weight_dtype.itemsize == 1 else \
            ", or pick fp8 weights in the Model Loader"
        raise CompiledModelTooLarge(
            f"EchoVideo: a torch.compiled DiT loads whole, and its {patcher.model_size() / 2 ** 30:.1f} GiB of "
            f"weights and {memory_required / 2 ** 30:.1f} GiB of work exceed the {total / 2 ** 30:.1f} GiB of "
            f"{device}: remove EchoVideo Compile Settings (ComfyUI then streams the weights){fp8}")


def load_gpu(patchers, memory_required: int = 0) -> None:
    """Load patchers to their load device (offloading other models as needed), fully unless
    may_load_partially."""
    if not isinstance(patchers, (list, tuple)):
        patchers = [patchers]
    partial, full = [], []
    for p in patchers:
        if may_load_partially(p):
            partial.append(p)
            continue
        if has_cast_layers(p):  # a compiled DiT: it must fit whole
            check_compiled_fits(p, memory_required)
        full.append(p)
    if full:
        mm.load_models_gpu(full, memory_required=memory_required, force_full_load=True)
    if partial:
        mm.load_models_gpu(partial, memory_required=memory_required)


def make_room(model_bytes: int, device) -> None:
    """For models ComfyUI does not manage (the face models): unload managed ones until their weights and
    ComfyUI's work reserve fit on the GPU."""
    device = torch.device(device)
    if device.type != "cpu":
        mm.free_memory(model_bytes + mm.minimum_inference_memory(), device)


def soft_empty_cache() -> None:
    mm.soft_empty_cache()


def choice_problem(node: str, name: str, value, options) -> Optional[str]:
    """Queue-time check of a combo value against its options, which ComfyUI 0.3.x makes for V1 nodes only;
    None for a fitting or a linked (None) value."""
    if value is None or value in options:
        return None
    return f"{node}: {name}: got {value!r}, needs one of: {', '.join(map(str, options))}"


def queue_time_result(*problems: Optional[str]):
    """validate_inputs' answer: True, or every problem found, joined."""
    found = [p for p in problems if p]
    return "; ".join(found) if found else True


def link_type_fits(received: str, expected: str) -> bool:
    """ComfyUI's own link-type rule (for nodes whose validate_inputs takes input_types, which switches it off)."""
    from comfy_execution.validation import validate_node_input

    return validate_node_input(received, expected)


def check_interrupt() -> None:
    """Raise ComfyUI's InterruptProcessingException when the user pressed cancel."""
    mm.throw_exception_if_processing_interrupted()


def show_text_on_node(node_id, text: str) -> None:
    """Shows text under the node in the ComfyUI editor (as core's image-size nodes do); nothing without a server."""
    try:
        from server import PromptServer

        server = PromptServer.instance
    except (ImportError, AttributeError):
        return
    if node_id is not None and hasattr(server, "send_progress_text"):
        server.send_progress_text(text, node_id)


# ---------------------------------------------------------------- attention

def register_comfy_attention() -> None:
    """Offer ComfyUI's optimized attention (xformers/sage/flash as launched) as backend 'comfy'."""
    try:
        from echovideo.attention import register_attention
    except ImportError:
        return

    def comfy_attention(q, k, v):
        import comfy.ldm.modules.attention as attn

        return attn.optimized_attention(q, k, v, q.shape[1], skip_reshape=True, skip_output_reshape=True)

    register_attention("comfy", comfy_attention)


# ---------------------------------------------------------------- progress / previews

def _previews_enabled() -> bool:
    try:
        from comfy.cli_args import args, LatentPreviewMethod

        return args.preview_method != LatentPreviewMethod.NoPreviews
    except Exception:
        return False


def latent_preview_image(latents: torch.Tensor):
    """The preview of a latent [B, F, C, h, w] (echovideo.preview: middle frame, latent-to-RGB factors), as a PIL
    image upscaled 4x (nearest) so that the 1/8-size latent is visible."""
    from PIL import Image

    from echovideo.preview import latent_to_rgb

    img = Image.fromarray(latent_to_rgb(latents).numpy())
    return img.resize((img.width * 4, img.height * 4), Image.NEAREST)


class Progress:
    """ProgressBar with optional latent previews; call it as callback(step, total, latents=None) (the sampler passes
    each step's denoised estimate)."""

    def __init__(self, total: int, previews: bool = True):
        self.pbar = comfy.utils.ProgressBar(total)
        self.previews = previews and _previews_enabled()

    def __call__(self, step: int, total: int, latents: Optional[torch.Tensor] = None) -> None:
        preview = None
        if self.previews and latents is not None:
            try:
                from latent_preview import MAX_PREVIEW_RESOLUTION

                preview = ("JPEG", latent_preview_image(latents), MAX_PREVIEW_RESOLUTION)
            except Exception as e:  # previews must never break sampling
                log.debug("EchoVideo preview failed: %s", e)
        self.pbar.update_absolute(step, total, preview)


# ---------------------------------------------------------------- unload hook

_HOOKED = "_echovideo_release_hook"


def _release_face_models() -> None:
    try:
        from echovideo.face import release_face_models
    except ImportError:
        return
    try:
        release_face_models()
    except Exception as e:
        log.warning("EchoVideo: releasing face models failed: %s", e)


def install_unload_hook(extra: Optional[Callable[[], None]] = None) -> None:
    """ComfyUI's 'unload models' / 'free memory' call mm.unload_all_models(); release our caches too."""
    original = mm.unload_all_models
    if getattr(original, _HOOKED, False):
        return

    def unload_all_models(*args, **kwargs):
        try:
            return original(*args, **kwargs)
        finally:
            _release_face_models()
            if extra is not None:
                extra()

    setattr(unload_all_models, _HOOKED, True)
    unload_all_models.__wrapped__ = original
    mm.unload_all_models = unload_all_models


def setup() -> None:
    """Called once when the pack loads."""
    register_model_folders()
    register_comfy_attention()
    install_unload_hook()
