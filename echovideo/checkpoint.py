"""Checkpoint loading for the EchoVideo DiT: the released diffusers folder (sharded safetensors +
index + config.json) or one merged .safetensors; bf16 / fp16 / fp32 / fp8 storage. safetensors only."""
import json
import math
import os
import re
from typing import Dict, List, Optional, Tuple

import torch
from safetensors import SafetensorError, safe_open

from .config import PICK_TRANSFORMER, RELEASED_CONFIG, TransformerConfig
from .errors import CheckpointError
from .iitf import IITF
from .ops import is_fp8, operations_for
from .transformer import EchoVideoTransformer

KEY_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.")
SAFETENSORS_HINT = "EchoVideo loads .safetensors (or .sft) only (no pickle files: .bin/.pt/.ckpt)"
SAFETENSORS_EXTENSIONS = (".safetensors", ".sft")
SHARD_NAME = re.compile(r"-(\d{5})-of-(\d{5})(\.safetensors|\.sft)$", re.IGNORECASE)  # k-of-N


def single_file_config(path: str) -> Optional[dict]:
    """The config JSON in a .safetensors file's metadata key "config" (None when absent)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file or folder")
    if not path.lower().endswith(SAFETENSORS_EXTENSIONS):
        raise CheckpointError(f"{path}: {SAFETENSORS_HINT}")
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    return parse_json(meta["config"], f"{path}: the 'config' metadata") if "config" in meta else None


def parse_json(text: str, where: str) -> dict:
    """A JSON object (configs and indexes are objects; anything else is the wrong file)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{where} is not valid JSON ({e}); is the file complete? Download it again") from None
    if not isinstance(value, dict):
        kind = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value), "null")
        raise CheckpointError(f"{where} holds a JSON {kind}, not the object a model's config or "
                              "index is; it is not the model's file: download the model's own config.json again")
    return value


def read_json_file(path: str):
    with open(path, encoding="utf-8") as f:  # JSON is UTF-8 whatever the system's locale (Windows: cp1252)
        return parse_json(f.read(), path)


def implied_shards(names) -> set:
    """Every shard that the names' -0000k-of-0000N endings say the checkpoint has (each name's own spelling)."""
    shards = set()
    for name in names:
        m = SHARD_NAME.search(name)
        if m:
            shards.update(name[:m.start(1)] + f"{k:05d}" + name[m.end(1):] for k in range(1, int(m[2]) + 1))
    return shards


def present_as(folder: str, name: str) -> str:
    """`name`, or the same stem with the other safetensors extension where only that is in the folder (an index
    written for .safetensors beside .sft shards)."""
    if os.path.isfile(os.path.join(folder, name)):
        return name
    stem, ext = os.path.splitext(name)
    other = next((stem + e for e in SAFETENSORS_EXTENSIONS if e != ext.lower()
                  and os.path.isfile(os.path.join(folder, stem + e))), None)
    return other or name


def covers(folder: str, weights, weight_map: dict) -> bool:
    """Whether the weight files hold every key the index maps (headers only)."""
    keys = set()
    for name in weights:
        try:
            with safe_open(os.path.join(folder, name), "pt") as f:
                keys.update(f.keys())
        except SafetensorError:
            return False
    return bool(weights) and set(weight_map) <= keys


def folder_weight_files(folder: str, what: str) -> List[str]:
    """A model folder's weight files: those its *.safetensors.index.json names, else every .safetensors/.sft in it
    ([] when none). An index none of whose files are there, beside weight files that hold every key it maps, is
    stale: those files load. A shard that is not there, or that safetensors cannot open (cut short), is named."""
    listed = sorted(os.listdir(folder))
    weights = {n for n in listed if n.lower().endswith(SAFETENSORS_EXTENSIONS)}
    index = next((n for n in listed if n.endswith(".safetensors.index.json")), None)
    names = weights
    if index:
        index_path = os.path.join(folder, index)
        weight_map = read_json_file(index_path).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index_path}: has no 'weight_map' object, so it is not a safetensors index; "
                                  "download it again with the checkpoint, or delete it beside a merged file")
        indexed = set(weight_map.values())
        stale = not weights & {present_as(folder, n) for n in indexed} and covers(folder, weights, weight_map)
        names = weights if stale else indexed  # stale: an index left beside a merged file holding all its keys
    missing = sorted(n for n in names | implied_shards(names)
                     if not os.path.isfile(os.path.join(folder, present_as(folder, n))))
    if missing:
        raise CheckpointError(f"{folder}: the checkpoint needs {', '.join(missing)}, which "
                              f"{'is' if len(missing) == 1 else 'are'} not in the folder; download every shard of "
                              f"{what} into it")
    files = [os.path.join(folder, n) for n in sorted({present_as(folder, n) for n in names})]
    for file in files:
        try:
            with safe_open(file, "pt"):  # reads the header: a file cut short fails here
                pass
        except SafetensorError as e:
            raise CheckpointError(f"{file}: cannot be read ({e}); the file is incomplete or damaged: "
                                  "download it again") from None
    return files


def _weight_files(path: str):
    """(list of safetensors files, config dict or None)."""
    if os.path.isdir(path):
        cfg_file = os.path.join(path, "config.json")
        config = read_json_file(cfg_file) if os.path.isfile(cfg_file) else None
        files = folder_weight_files(path, "the transformer")
        if not files:
            raise CheckpointError(f"{path}: no .safetensors weights in this folder; {SAFETENSORS_HINT}")
        return files, config
    return [path], single_file_config(path)


def read_header(path: str) -> Tuple[Dict[str, Tuple[tuple, torch.dtype]], dict]:
    """Key -> (shape, dtype) of the checkpoint (prefixes stripped) and its config (released if absent)."""
    files, config = _weight_files(path)
    layout = {}
    for file in files:
        with safe_open(file, "pt") as f:
            for key in f.keys():
                sl = f.get_slice(key)
                layout[_strip(key)] = (tuple(sl.get_shape()), _dtype(sl.get_dtype()))
    return layout, (config if config is not None else RELEASED_CONFIG.to_dict())


def _strip(key: str) -> str:
    for p in KEY_PREFIXES:
        if key.startswith(p):
            return key[len(p):]
    return key


def _dtype(name: str) -> torch.dtype:
    table = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
             "F8_E4M3": getattr(torch, "float8_e4m3fn", None), "F8_E5M2": getattr(torch, "float8_e5m2", None)}
    return table.get(name, torch.float32)


def expected_layout(config: TransformerConfig) -> Dict[str, tuple]:
    """Key -> shape of the model built from `config` (on the meta device: no allocation)."""
    with torch.device("meta"):
        model = EchoVideoTransformer(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def other_model_keys(keys) -> Optional[Tuple[str, str]]:
    """(what, fix) for another model's weights, told by their key names (a VAE's, T5's, SigLIP's), else None."""
    keys = list(keys)
    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in keys):
        return "a VAE's (encoder.down_blocks / decoder.up_blocks keys)", "load it with EchoVideo VAE Loader"
    if any(k.startswith("encoder.block.") or k == "shared.weight" for k in keys):
        return ("a T5 text encoder's (encoder.block keys)",
                "load it with EchoVideo T5 Loader, or core Load CLIP (type sd3)")
    if any(k.startswith("vision_model.") for k in keys):
        return ("a SigLIP/CLIP encoder's (vision_model keys)",
                "it belongs in models/clip_vision, picked in EchoVideo Face Encoder Loader")
    return None


def diagnose(found: Dict[str, tuple], expected: Dict[str, tuple], path: str = "") -> Optional[str]:
    """None when the layouts agree, else a message naming the first missing/unexpected keys and the cause
    (`path`: the file or folder read, for causes its name tells)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [k for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    if not (missing or unexpected or wrong):
        return None
    parts = [f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} wrong-shape keys"]
    if missing:
        parts.append(f"first missing: {missing[0]}")
    if unexpected:
        parts.append(f"first unexpected: {unexpected[0]}")
    if wrong:
        parts.append(f"first wrong shape: {wrong[0]} is {tuple(found[wrong[0]])}, needs {tuple(expected[wrong[0]])}")
    name = os.path.basename(os.path.normpath(path))
    shard = SHARD_NAME.search(name)
    if missing and shard:
        return "; ".join(parts) + (f". Likely cause: {name} is one shard of a {int(shard[2])}-shard checkpoint: "
                                   "select the folder that holds every shard and its .index.json (download all "
                                   f"{int(shard[2])} shards)")
    causes = []
    if "scaled_fp8" in found or any(k.endswith(".scale_weight") for k in unexpected):
        causes.append("a ComfyUI scaled-fp8 file (.scale_weight keys): this format is not supported; use a plain "
                      "fp8 (e4m3fn) or bf16 EchoVideo transformer file")
    if missing and all(k.split(".")[0] in IITF.SUBMODULES for k in missing):
        causes.append("this looks like a plain CogVideoX-5B checkpoint without EchoVideo's identity modules "
                      "(face_proj, text_proj, face_info_proj, face_prj_wofc); load the EchoVideo transformer")
    pe = "patch_embed.proj.weight"
    if pe in found and pe in expected and found[pe][1] != expected[pe][1]:
        causes.append(f"in_channels is {found[pe][1]} instead of {expected[pe][1]}: a text-to-video CogVideoX "
                      "checkpoint; EchoVideo needs 16 noise + 16 face-frame latent channels")
    other = other_model_keys(unexpected) if len(unexpected) == len(found) else None  # no EchoVideo key at all
    if other and not causes:
        causes.append(f"the weights are {other[0]}, not the EchoVideo transformer's: {other[1]}; {PICK_TRANSFORMER}")
    if not causes and (missing or unexpected):
        causes.append("the file is not an EchoVideo transformer, or its config (safetensors metadata "
                      "'config' or config.json) does not match its weights")
    return "; ".join(parts) + ". Likely cause: " + "; ".join(causes)


def read_config_and_weights(path: str, what: str, default_config: Optional[dict] = None):
    """(config, state dict) of a folder (config.json + *.safetensors) or one .safetensors (config from its
    metadata key "config", else `default_config`)."""
    from safetensors.torch import load_file

    if os.path.isdir(path):
        cfg_file = os.path.join(path, "config.json")
        if not os.path.isfile(cfg_file):
            raise CheckpointError(f"{what} folder {path} has no config.json")
        config = read_json_file(cfg_file)
        files = folder_weight_files(path, f"the {what}")
        if not files:
            raise CheckpointError(f"{what} folder {path} has no .safetensors weights; {SAFETENSORS_HINT}")
        state = {}
        for file in files:
            state.update(load_file(file))
        return config, state
    config = single_file_config(path)
    return (config if config is not None else default_config), load_file(path)


def load_state_dict(path: str, dtype: Optional[torch.dtype] = None, device="cpu",
                    keep_unquantized: bool = False) -> Dict[str, torch.Tensor]:
    """The weights (prefixes stripped), each converted to `dtype` as it is read: one copy in memory.
    keep_unquantized: tensors the file does not store in fp8 stay as stored (an fp8 file's bf16 norms and biases)."""
    files, _ = _weight_files(path)
    state = {}
    for file in files:
        with safe_open(file, "pt", device=str(device) if device != "meta" else "cpu") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                keep = dtype is None or (keep_unquantized and not is_fp8(t.dtype))
                state[_strip(key)] = t if keep else _convert(t, dtype)
    return state


def main_stored_dtype(layout: Dict[str, Tuple[tuple, torch.dtype]]) -> torch.dtype:
    """The dtype most of the weights' elements are stored in (an fp8 file that keeps its norms and biases in
    bf16 stays fp8)."""
    elements: Dict[torch.dtype, int] = {}
    for shape, dtype in layout.values():
        elements[dtype] = elements.get(dtype, 0) + math.prod(shape)
    return max(elements, key=elements.get)


def default_compute_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    """fp32 and fp16 weights compute in their own dtype; bf16 and fp8 in bf16."""
    if weight_dtype == torch.float32:
        return torch.float32
    if weight_dtype == torch.float16:
        return torch.float16
    return torch.bfloat16


def load_transformer(path: str, weight_dtype: Optional[torch.dtype] = None,
                     compute_dtype: Optional[torch.dtype] = None, operations=None, device="cpu",
                     attention="sdpa") -> EchoVideoTransformer:
    """Loads the DiT. weight_dtype: storage dtype (None = as stored; a file mixing dtypes: the one most weights
    are stored in; fp8 upcasts per layer). An fp8 file kept in its own fp8 keeps the norms and biases it stores
    beside it in bf16 or fp32.
    compute_dtype: the dtype activations run in (default from the weights: fp32, fp16, else bf16)."""
    layout, config_dict = read_header(path)
    try:
        config = TransformerConfig.from_dict(config_dict)
    except (CheckpointError, TypeError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    problem = diagnose({k: v[0] for k, v in layout.items()}, expected_layout(config), path)
    if problem:
        raise CheckpointError(f"{path}: does not match the EchoVideo transformer: {problem}")
    stored = main_stored_dtype(layout)
    weight_dtype = weight_dtype or stored
    compute_dtype = compute_dtype or default_compute_dtype(weight_dtype)
    ops = operations or operations_for(weight_dtype, compute_dtype)
    with torch.device("meta"):
        model = EchoVideoTransformer(config, operations=ops, attention=attention)
    # per-layer upcasts take each tensor in its own dtype: an fp8 file kept in its fp8 needs no rounding of the
    # higher-precision tensors stored beside it
    state = load_state_dict(path, dtype=weight_dtype, device="cpu",
                            keep_unquantized=is_fp8(weight_dtype) and weight_dtype == stored)
    model.load_state_dict(state, strict=True, assign=True)
    model.compute_dtype = compute_dtype
    model.weight_dtype = weight_dtype
    return model.to(device).eval().requires_grad_(False)


def _convert(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if t.dtype == dtype:
        return t
    if is_fp8(dtype) and t.dtype != torch.float32:
        t = t.float()
    return t.to(dtype)


def save_single_file(model_or_state, config, path: str, dtype: Optional[torch.dtype] = None) -> None:
    """One .safetensors with the config JSON in its metadata (how tiny models describe themselves)."""
    from safetensors.torch import save_file

    state = model_or_state.state_dict() if hasattr(model_or_state, "state_dict") else model_or_state
    state = {k: (v if dtype is None else _convert(v, dtype)).contiguous() for k, v in state.items()}
    cfg = config.to_dict() if isinstance(config, TransformerConfig) else dict(config)
    save_file(state, path, metadata={"config": json.dumps(cfg), "format": "pt"})
