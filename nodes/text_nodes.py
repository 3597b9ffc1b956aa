"""EchoVideo T5 Loader and EchoVideo Text Encode."""
from __future__ import annotations

import functools
import os

import torch

from echovideo import text

from . import bridge
from .bridge import io
from .types import T5Bundle, T5Encoder, TextEmbeds, TextEmbedsData

CATEGORY = "EchoVideo"
NONE_FOUND = "(no T5 in models/text_encoders)"


def t5_choices() -> list:
    """Transformers folders (config.json inside) and single safetensors in models/text_encoders."""
    return bridge.model_entries("text_encoders") or [NONE_FOUND]


def _resolve_t5(name: str) -> str:
    if name == NONE_FOUND:
        name = ""
    return bridge.resolve_entry("text_encoders", name)


@functools.lru_cache(maxsize=4)
def _tokenizer(folder: str):
    return text.load_tokenizer(folder)


class T5Loader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EchoVideoT5Loader",
            display_name="EchoVideo T5 Loader",
            category=CATEGORY,
            description="Loads the T5-XXL text encoder in transformers layout (a folder with config.json + "
                        "safetensors, or one safetensors with the config in its metadata) from models/text_encoders.",
            inputs=[
                io.Combo.Input("t5_name", options=t5_choices(),
                               tooltip="Folder or file under models/text_encoders (e.g. the released text_encoder/ folder)."),
                io.Combo.Input("precision", options=bridge.PRECISIONS, default="default",
                               tooltip="Weight and compute dtype. default: ComfyUI's --fp16/--bf16/--fp32-text-enc "
                                       "flag if given, else bf16 (the reference's) where the device supports it, "
                                       "else fp16 (the wo layers stay fp32)."),
            ],
            outputs=[T5Encoder.Output(display_name="t5", tooltip="T5 encoder for EchoVideo Text Encode.")],
        )

    @classmethod
    def validate_inputs(cls, t5_name=None, precision=None):
        from .model_nodes import entry_problem

        return bridge.queue_time_result(
            entry_problem("text_encoders", t5_name),
            bridge.choice_problem("EchoVideo T5 Loader", "precision", precision, bridge.PRECISIONS))

    @classmethod
    def execute(cls, t5_name, precision="default") -> io.NodeOutput:
        path = _resolve_t5(t5_name)
        dtype = bridge.t5_dtype() if precision == "default" else bridge.weight_dtype(precision)
        # tokenizer: the released tokenizer/ beside the weights, else ComfyUI's shipped T5 tokenizer
        tok_dir = text.find_tokenizer_beside(path) or bridge.comfy_t5_tokenizer_dir()
        from .model_nodes import named_errors

        with named_errors("EchoVideo T5 Loader", path, "a T5 encoder"):
            encoder = text.load_t5_encoder(path, dtype=dtype, device=bridge.offload_device("text"))
        tokenizer = _tokenizer(tok_dir)
        check_vocab(encoder.get_input_embeddings().weight.shape[0], len(tokenizer),
                    f"EchoVideo T5 Loader: the T5 ({os.path.basename(path)})", f"the tokenizer in {tok_dir}",
                    "Put the released tokenizer/ folder beside the T5 weights (see the README model table).")
        patcher = bridge.wrap(encoder, kind="text")
        return io.NodeOutput(T5Bundle(patcher=patcher, tokenizer=tokenizer, path=path))


# ---------------------------------------------------------------- ComfyUI CLIP path

def _comfy_t5(clip):
    """(SDClipModel, comfy T5 module) inside a core CLIP object."""
    found = bridge.find_comfy_t5(clip)
    if found is not None:
        return found
    raise ValueError("EchoVideo Text Encode: the connected CLIP holds no T5 encoder. Load t5xxl_fp16.safetensors "
                     "(or t5xxl_fp8_e4m3fn.safetensors) with the core 'Load CLIP' node, type 'sd3' or 'mochi'.")


def _clip_tokenizer(clip):
    """The CLIP's own HF T5 tokenizer when it has one, else ComfyUI's shipped t5_tokenizer."""
    t5_tok = getattr(getattr(clip, "tokenizer", None), "t5xxl", None)
    hf = getattr(t5_tok, "tokenizer", None)
    if hf is not None and callable(hf):
        return hf
    return _tokenizer(bridge.comfy_t5_tokenizer_dir())


def check_vocab(embeddings: int, tokenizer_size: int, model: str = "EchoVideo Text Encode: the CLIP's T5",
                tokenizer: str = "the T5 tokenizer",
                fix: str = "Load t5xxl_fp16.safetensors with the core 'Load CLIP' node (type sd3 or mochi).") -> None:
    """T5 v1.1 has 32128 embeddings for a 32100-token tokenizer; UMT5 (Wan) has 256384."""
    if not tokenizer_size <= embeddings <= tokenizer_size + 1024:
        raise ValueError(f"{model} has {embeddings} token embeddings but {tokenizer} has {tokenizer_size} tokens: "
                         f"they are not T5 v1.1 XXL and its tokenizer (UMT5 from Wan?). {fix}")


@torch.no_grad()
def encode_with_clip(clip, prompt: str, max_length: int = text.MAX_LENGTH) -> torch.Tensor:
    """Reference ids (226, EOS, pad) through ComfyUI's T5, no mask -> [1, 226, D] float32."""
    _, t5 = _comfy_t5(clip)
    tok = _clip_tokenizer(clip)
    check_vocab(t5.get_input_embeddings().weight.shape[0], len(tok))
    ids = text.tokenize(tok, prompt, max_length)
    clip.load_model()
    device = t5.get_input_embeddings().weight.device
    out = t5(ids.to(device), None, dtype=torch.float32)
    return out[0].float()


@torch.no_grad()
def encode_with_t5(bundle: T5Bundle, prompt: str, max_length: int = text.MAX_LENGTH) -> torch.Tensor:
    bridge.load_gpu(bundle.patcher)
    return text.encode_prompt(bridge.unwrap(bundle.patcher), bundle.tokenizer, prompt, max_length)


def prompt_length_note(tokenizer, positive: str, negative: str) -> str:
    """Each prompt's length against what the model reads, and what it leaves out, for the node's text in the
    editor. Sent at every run: the editor keeps a node's last text until it gets another."""
    lines = []
    for name, prompt in (("positive", positive), ("negative", negative)):
        if not isinstance(prompt, str):
            continue
        count = text.token_count(tokenizer, prompt)
        if count <= text.MAX_LENGTH:
            lines.append(f"{name}: {count} of {text.MAX_LENGTH} tokens")
        else:
            lines += [f"{name}: {count} tokens, longer than the {text.MAX_LENGTH} the model reads; left out: "
                      f"{text.excerpt(dropped)}" for dropped in text.truncated_parts(tokenizer, [prompt])]
        unknown = text.unknown_parts(tokenizer, prompt)
        if unknown:
            advice = text.ENGLISH_ADVICE if text.beyond_latin(unknown) else ""
            lines.append(f"{name}: not in T5's vocabulary, so not read{advice}: {text.excerpt_parts(unknown)}")
    return "\n".join(lines)


ONE_ENCODER = ("EchoVideo Text Encode: connect exactly one text encoder: 'clip' (core Load CLIP with t5xxl) or "
               "'t5' (EchoVideo T5 Loader).")


class TextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EchoVideoTextEncode",
            display_name="EchoVideo Text Encode",
            category=CATEGORY,
            description="Encodes the positive and negative prompt exactly as EchoVideo does (T5, 226 tokens padded, "
                        "no attention mask). Connect EITHER a core CLIP loaded from t5xxl_*.safetensors OR an "
                        "EchoVideo T5 Loader.",
            inputs=[
                io.String.Input("positive", multiline=True, default="",
                                tooltip="What the video shows: the person, the action, the scene, the camera. The "
                                        f"model reads {text.MAX_LENGTH} T5 tokens (about 170 English words); a longer "
                                        "prompt's end is left out. The node shows each prompt's length and what was cut."),
                io.String.Input("negative", multiline=True, default="",
                                tooltip="What to avoid. The reference pipeline uses an empty negative prompt."),
                io.Clip.Input("clip", optional=True, lazy=True,
                              tooltip="Core 'Load CLIP' output with a T5-XXL file (type sd3 or mochi). Leave "
                                      "empty when using 't5'."),
                T5Encoder.Input("t5", optional=True, lazy=True,
                                tooltip="EchoVideo T5 Loader output. Leave empty when using 'clip'."),
            ],
            outputs=[TextEmbeds.Output(display_name="text", tooltip="Positive and negative [1, 226, 4096] embeddings.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, input_types):
        """At queue time, before any loader runs: exactly one encoder linked. ComfyUI passes the linked inputs'
        types here and then skips its own link-type check for this node, so the types are checked here too."""
        connected = [name for name in ("clip", "t5") if name in input_types]
        if len(connected) != 1:
            return ONE_ENCODER + (" Both are connected." if connected else " Neither is connected.")
        expected = {"positive": io.String.io_type, "negative": io.String.io_type, "clip": io.Clip.io_type,
                    "t5": T5Encoder.io_type}
        for name, received in input_types.items():
            if name in expected and not bridge.link_type_fits(received, expected[name]):
                return (f"EchoVideo Text Encode: '{name}' is linked to an output of type {received}; it takes "
                        f"{expected[name]}")
        return True

    @classmethod
    def check_lazy_status(cls, positive=None, negative=None, **encoders):
        """Both encoder inputs are lazy: ComfyUI names the connected ones here before running their loaders, so
        connecting both is refused before a T5 is loaded in vain; the connected one is then evaluated."""
        connected = [name for name in ("clip", "t5") if name in encoders]
        if len(connected) > 1:
            raise ValueError(ONE_ENCODER)
        return [name for name in connected if encoders[name] is None]

    @classmethod
    def execute(cls, positive, negative, clip=None, t5=None) -> io.NodeOutput:
        if (clip is None) == (t5 is None):
            raise ValueError(ONE_ENCODER)
        if clip is not None:
            _comfy_t5(clip)  # a CLIP without T5 is refused before the node shows any token count
            enc = functools.partial(encode_with_clip, clip)
        else:
            enc = functools.partial(encode_with_t5, t5)
        note = prompt_length_note(t5.tokenizer if t5 is not None else _clip_tokenizer(clip), positive, negative)
        bridge.show_text_on_node(cls.hidden.unique_id if cls.hidden else None, note)
        out = bridge.intermediate_device()
        pos = enc(positive).to(out)
        bridge.check_interrupt()
        neg = enc(negative).to(out)
        return io.NodeOutput(TextEmbedsData(positive=pos, negative=neg, positive_prompt=positive,
                                            negative_prompt=negative))


NODES = [T5Loader, TextEncode]
