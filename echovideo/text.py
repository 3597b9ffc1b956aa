"""T5 text conditioning as the reference pipeline computes it.

The reference (CogVideoX / EchoVideo) tokenizes with padding="max_length", max_length=226,
truncation=True, add_special_tokens=True and runs T5EncoderModel(input_ids)[0] with NO attention
mask, so padding tokens are encoded too. Output: [1, 226, d_model].

Plain torch + transformers; never imports ComfyUI. Weights are loaded from safetensors only.
"""
from __future__ import annotations

import logging
import os
from typing import List, Optional, Sequence, Union

import torch

from .checkpoint import folder_weight_files, parse_json, read_json_file
from .errors import CheckpointError, EchoVideoInputError

MAX_LENGTH = 226  # the reference's max_sequence_length
log = logging.getLogger("echovideo")
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json")


# ---------------------------------------------------------------- tokenizer

def load_tokenizer(folder: str):
    """Load a T5 tokenizer from a folder (the released `tokenizer/` folder or ComfyUI's t5_tokenizer)."""
    from transformers import AutoTokenizer

    if not folder or not os.path.isdir(folder):
        raise FileNotFoundError(f"T5 tokenizer folder not found: {folder!r}")
    if not any(os.path.isfile(os.path.join(folder, f)) for f in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{folder!r} is not a tokenizer folder: it holds none of {', '.join(TOKENIZER_FILES)}")
    return AutoTokenizer.from_pretrained(folder)


def find_tokenizer_beside(weights_path: str) -> Optional[str]:
    """The released layout keeps `tokenizer/` beside `text_encoder/`; look there and next to the file."""
    weights_path = os.path.normpath(weights_path)  # "text_encoder/" (tab completion) is the folder itself
    base = weights_path if os.path.isdir(weights_path) else os.path.dirname(weights_path)
    candidates = [os.path.join(base, "tokenizer"), os.path.join(os.path.dirname(base), "tokenizer"), base]
    for c in candidates:
        if os.path.isdir(c) and any(os.path.isfile(os.path.join(c, f)) for f in TOKENIZER_FILES):
            return c
    return None


DROPPED_TEXT_SHOWN = 200  # characters of a truncated prompt's dropped end quoted in the warning


def excerpt(dropped: str) -> str:
    """The dropped text quoted, or its start and how much more (a pasted essay must not flood the log)."""
    if len(dropped) <= DROPPED_TEXT_SHOWN:
        return repr(dropped)
    return f"{dropped[:DROPPED_TEXT_SHOWN]!r} and {len(dropped) - DROPPED_TEXT_SHOWN} more characters"


def tokenize(tokenizer, prompt: Union[str, Sequence[str]], max_length: int = MAX_LENGTH) -> torch.Tensor:
    """Reference token ids: [B, max_length] int64 (EOS appended, padded with pad id, truncated)."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else None
    if prompts is None or not all(isinstance(p, str) for p in prompts):
        raise EchoVideoInputError(f"prompt: got {type(prompt).__name__}, needs a string or list of strings")
    out = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                    add_special_tokens=True, return_tensors="pt")
    for dropped in truncated_parts(tokenizer, prompts, max_length):
        log.warning("EchoVideo: the prompt is longer than the %d tokens the model reads; this end of it is "
                    "left out: %s. Shorten the prompt to keep it.", max_length, excerpt(dropped))
    for unknown in filter(None, (unknown_parts(tokenizer, p) for p in prompts)):
        log.warning("EchoVideo: T5's vocabulary has no %s, so the model does not read them%s.",
                    excerpt_parts(unknown), ENGLISH_ADVICE if beyond_latin(unknown) else "")
    return out.input_ids


def token_count(tokenizer, prompt: str) -> int:
    """Tokens of the prompt with its EOS, untruncated (the model reads MAX_LENGTH of them)."""
    return len(tokenizer([prompt], padding=False, truncation=False, add_special_tokens=True,
                         verbose=False).input_ids[0])


ENGLISH_ADVICE = "; write prompts in English"
UNKNOWN_PARTS_SHOWN = 8


def beyond_latin(parts: Sequence[str]) -> bool:
    """Whether any character is past the Latin alphabets (Chinese, emoji, ...): a prompt in another script, not a
    stray brace or accent in an English one."""
    return any(ord(c) > 0x24F for part in parts for c in part)


def excerpt_parts(parts: Sequence[str]) -> str:
    """The first parts, each quoted (a comma may be one of them), and how many more."""
    shown = ", ".join(repr(part) for part in parts[:UNKNOWN_PARTS_SHOWN])
    more = len(parts) - UNKNOWN_PARTS_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def unknown_parts(tokenizer, prompt: str) -> List[str]:
    """The stretches of the prompt the tokenizer reads as its unknown token (T5's vocabulary has no Chinese,
    Japanese, Korean or emoji), so the model never sees them. Needs a fast tokenizer's character offsets; [] for
    a tokenizer without them or without an unknown token."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or not getattr(tokenizer, "is_fast", False):
        return []
    enc = tokenizer(prompt, add_special_tokens=False, truncation=False, return_offsets_mapping=True, verbose=False)
    spans: List[List[int]] = []
    for token, (start, end) in zip(enc.input_ids, enc.offset_mapping):
        if token != unk:
            continue
        if spans and not prompt[spans[-1][1]:start].strip():  # only spaces between: one stretch
            spans[-1][1] = end
        else:
            spans.append([start, end])
    return [prompt[a:b].strip() for a, b in spans if prompt[a:b].strip()]


def truncated_parts(tokenizer, prompts: Sequence[str], max_length: int = MAX_LENGTH) -> List[str]:
    """The text each over-long prompt loses to truncation (as the reference pipeline reports it)."""
    if getattr(tokenizer, "is_fast", False):  # the prompt's own characters (a decode shows <unk> for CJK, emoji)
        enc = tokenizer(list(prompts), padding=False, truncation=False, add_special_tokens=False,
                        return_offsets_mapping=True, verbose=False)
        return [prompt[offsets[max_length - 1][0]:].strip() for prompt, offsets in zip(prompts, enc.offset_mapping)
                if len(offsets) > max_length - 1]
    full = tokenizer(list(prompts), padding=False, truncation=False, add_special_tokens=True,
                     verbose=False).input_ids  # verbose=False: no "longer than the maximum" notice of its own
    # the kept ids end with EOS at max_length - 1; the full ids end with EOS too
    return [tokenizer.decode(ids[max_length - 1:-1]) for ids in full if len(ids) > max_length]


# ---------------------------------------------------------------- encoder

def _read_safetensors_metadata(path: str) -> dict:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return f.metadata() or {}


def _config_from(folder_or_file: str) -> tuple[dict, List[str]]:
    """(config dict, safetensors files) for a transformers folder or a single safetensors file."""
    if os.path.isdir(folder_or_file):
        cfg_path = os.path.join(folder_or_file, "config.json")
        if not os.path.isfile(cfg_path):
            raise CheckpointError(f"T5 folder {folder_or_file!r} has no config.json (needs the transformers layout: "
                                  "config.json + *.safetensors)")
        config = read_json_file(cfg_path)
        files = folder_weight_files(folder_or_file, "the T5 encoder")
        if not files:
            pickles = [n for n in os.listdir(folder_or_file) if n.endswith((".bin", ".pt", ".pth", ".ckpt"))]
            extra = f" (found {', '.join(pickles)}: pickle files are not loaded; convert them to safetensors)" if pickles else ""
            raise CheckpointError(f"T5 folder {folder_or_file!r} has no .safetensors weights{extra}")
        return config, files
    if os.path.isfile(folder_or_file):
        if not folder_or_file.endswith((".safetensors", ".sft")):
            raise CheckpointError(f"{folder_or_file!r}: only safetensors files are loaded (no pickle)")
        meta = _read_safetensors_metadata(folder_or_file)
        if "config" not in meta:
            raise CheckpointError(
                f"{os.path.basename(folder_or_file)!r} has no 'config' entry in its safetensors metadata; use a "
                "folder with config.json + safetensors, or load this file with ComfyUI's CLIPLoader instead")
        config = parse_json(meta["config"], f"{folder_or_file!r}: metadata 'config'")
        return config, [folder_or_file]
    raise FileNotFoundError(f"T5 encoder not found: {folder_or_file!r}")


PICK_T5 = ("pick the T5 v1.1 XXL encoder (the release's text_encoder/ folder with tokenizer/ inside; README: "
           "Models), or load a t5xxl file with core Load CLIP (type sd3) into Text Encode's clip input")


def load_t5_encoder(folder_or_file: str, dtype: torch.dtype = torch.bfloat16, device="cpu"):
    """Build transformers' T5EncoderModel from a transformers folder or a single safetensors with config metadata."""
    from safetensors import safe_open
    from transformers import T5Config, T5EncoderModel

    config_dict, files = _config_from(folder_or_file)
    if config_dict.get("model_type") is None and "_class_name" in config_dict:
        raise CheckpointError(f"{folder_or_file!r} holds a diffusers {config_dict['_class_name']!r} model, not a T5 "
                              f"encoder; {PICK_T5}")
    if config_dict.get("model_type") not in (None, "t5"):
        raise CheckpointError(f"{folder_or_file!r}: config model_type is {config_dict.get('model_type')!r}, needs "
                              f"'t5' (EchoVideo's text encoder is T5 v1.1 XXL; UMT5 is Wan's); {PICK_T5}")
    config = T5Config.from_dict(config_dict)
    with torch.device("meta"):
        model = T5EncoderModel(config)
    # as transformers' from_pretrained: in fp16, T5's `wo` layers stay float32 (they overflow in fp16)
    keep_fp32 = tuple(getattr(model, "_keep_in_fp32_modules", None) or ()) if dtype == torch.float16 else ()

    def target_dtype(key):
        parts = key.split(".")  # e.g. encoder.block.0.layer.1.DenseReluDense.wo.weight: module name "wo"
        return torch.float32 if len(parts) > 1 and parts[-2] in keep_fp32 else dtype

    def wanted(key):  # a full T5's decoder is skipped
        return not key.startswith(("decoder.", "lm_head."))

    names = set()  # the keys are checked from the files' headers before any weight is read
    for f in files:
        with safe_open(f, "pt", device="cpu") as weights:
            names.update(k for k in weights.keys() if wanted(k))
    if "shared.weight" not in names and "encoder.embed_tokens.weight" in names:
        names.add("shared.weight")
    expected = set(model.state_dict().keys())
    missing = sorted(k for k in expected - names if k != "encoder.embed_tokens.weight")
    if missing:
        raise CheckpointError(f"{folder_or_file!r} is not a T5 encoder checkpoint: {len(missing)} weights missing, "
                              f"e.g. {missing[:3]}; {PICK_T5}")
    unexpected = sorted(names - expected)
    if unexpected:
        raise CheckpointError(f"{folder_or_file!r} is not a T5 v1.1 encoder checkpoint: {len(unexpected)} weights "
                              f"this T5 does not have, e.g. {unexpected[:3]}; {PICK_T5}")
    state = {}  # each weight converted as it is read (one copy in memory)
    for f in files:
        with safe_open(f, "pt", device="cpu") as weights:
            for k in weights.keys():
                if wanted(k):
                    t = weights.get_tensor(k)
                    state[k] = t.to(target_dtype(k)) if t.is_floating_point() else t
    if "shared.weight" not in state and "encoder.embed_tokens.weight" in state:
        state["shared.weight"] = state["encoder.embed_tokens.weight"]
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    model.to(device=device)  # every weight is in its dtype already
    model.eval().requires_grad_(False)
    return model


@torch.no_grad()
def encode_ids(encoder, input_ids: torch.Tensor) -> torch.Tensor:
    """T5EncoderModel(input_ids)[0], no attention mask (as the reference)."""
    device = next(encoder.parameters()).device
    return encoder(input_ids.to(device))[0]


@torch.no_grad()
def encode_prompt(encoder, tokenizer, prompt: Union[str, Sequence[str]], max_length: int = MAX_LENGTH) -> torch.Tensor:
    """Reference prompt embeddings [B, max_length, d_model]."""
    return encode_ids(encoder, tokenize(tokenizer, prompt, max_length))
