"""EchoVideo Model Loader and EchoVideo VAE Loader."""
from __future__ import annotations

import math

from echovideo.errors import MissingPackageError, missing_packages

from . import bridge
from .bridge import io
from .types import Model, ModelBundle, Vae, VaeBundle

CATEGORY = "EchoVideo"


def _choices(folder: str, none_label: str) -> list:
    return bridge.model_entries(folder) or [none_label]


def named_errors(node: str, path: str, what: str = "this model"):
    """Re-raise a loader error with the node and the file name in front; unexpected errors from a wrong
    file (bad config keys, shapes) become a ValueError that says which file was expected."""
    import contextlib
    import os

    from safetensors import SafetensorError

    from echovideo.errors import OUT_OF_MEMORY, CheckpointError, EchoVideoInputError, is_host_out_of_memory

    name = os.path.basename(path.rstrip(os.sep))

    @contextlib.contextmanager
    def ctx():
        try:
            yield
        except (CheckpointError, EchoVideoInputError) as e:
            msg = str(e)
            raise type(e)(f"{node}: {msg if name in msg else name + ': ' + msg}") from None
        except (TypeError, KeyError, RuntimeError, ValueError, SafetensorError) as e:
            if isinstance(e, OUT_OF_MEMORY):
                raise
            if is_host_out_of_memory(e):
                raise MemoryError(f"{node}: not enough RAM to load {name} ({e}). Close other programs or unload "
                                  "other models, or pick a smaller file or weight dtype (fp8 for the transformer)."
                                  ) from e
            raise ValueError(f"{node}: {name} could not be loaded as {what} ({type(e).__name__}: {e}); "
                             f"is it the right file, completely downloaded? -- {bridge.README_HINT}") from e
    return ctx()


def resolve_entry(folder: str, name: str) -> str:
    """A folder (diffusers layout) or a file in a model folder; FileNotFoundError names what was searched."""
    if name.startswith("(no "):
        name = ""
    return bridge.resolve_entry(folder, name)


def entry_problem(folder: str, name) -> str | None:
    """resolve_entry at queue time: None when the entry is found (or the input is linked), else the message
    naming the folders searched, so a missing model is refused before any other node runs."""
    if name is None:
        return None
    try:
        resolve_entry(folder, name)
    except FileNotFoundError as e:
        return str(e)
    return None


def attention_problem(attention) -> str | None:
    """None, or why the Model Loader's attention backend cannot be used (e.g. sageattention not installed)."""
    from echovideo.attention import get_attention
    from echovideo.errors import EchoVideoInputError

    if attention is None:
        return None
    try:
        get_attention(attention)
    except EchoVideoInputError as e:
        return f"EchoVideo Model Loader: {e}"
    return None


class ModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from echovideo.attention import available_attention

        return io.Schema(
            node_id="EchoVideoModelLoader",
            display_name="EchoVideo Model Loader",
            category=CATEGORY,
            description="Loads the EchoVideo transformer (CogVideoX-5B DiT + IITF) from models/diffusion_models: "
                        "one .safetensors or the released diffusers transformer/ folder.",
            inputs=[
                io.Combo.Input("model_name", options=_choices("diffusion_models", "(no model in models/diffusion_models)"),
                               tooltip="EchoVideo transformer file or folder under models/diffusion_models."),
                io.Combo.Input("weight_dtype", options=list(bridge.WEIGHT_DTYPES),
                               default="default",
                               tooltip="Storage dtype of the weights. fp8 halves memory; layers are cast to the "
                                       "compute dtype one at a time. default: ComfyUI's --*-unet precision flag "
                                       "if given; an fp8 file stays fp8 where ComfyUI keeps fp8 (fp8 compute, or "
                                       "bf16 would not fit); else bf16 (fp32 on CPU). Computes in bf16, or fp32 on "
                                       "devices without bf16 (never fp16 unless --fp16-unet: CogVideoX overflows in "
                                       "fp16)."),
                io.Combo.Input("attention", options=available_attention(), default="sdpa",
                               tooltip="Attention backend. sdpa: PyTorch; comfy: ComfyUI's optimized attention "
                                       "(as launched); sage: SageAttention if installed."),
            ],
            outputs=[Model.Output(display_name="model", tooltip="EchoVideo transformer.")],
        )

    @classmethod
    def validate_inputs(cls, model_name=None, weight_dtype=None, attention=None):
        return bridge.queue_time_result(
            entry_problem("diffusion_models", model_name),
            bridge.choice_problem("EchoVideo Model Loader", "weight_dtype", weight_dtype, list(bridge.WEIGHT_DTYPES)),
            attention_problem(attention))

    @classmethod
    def execute(cls, model_name, weight_dtype="default", attention="sdpa") -> io.NodeOutput:
        from echovideo.checkpoint import load_transformer, main_stored_dtype, read_header
        from echovideo.errors import EchoVideoInputError

        problem = attention_problem(attention)
        if problem:  # before loading: a backend problem is not the file's
            raise EchoVideoInputError(problem)
        path = resolve_entry("diffusion_models", model_name)
        device = bridge.load_device("unet")
        with named_errors("EchoVideo Model Loader", path, "the EchoVideo transformer"):
            layout, _ = read_header(path)
        weight, compute = bridge.dit_dtypes(weight_dtype, device, stored=main_stored_dtype(layout),
                                            params=sum(math.prod(shape) for shape, _ in layout.values()))
        ops = bridge.operations(weight, compute, device)
        with named_errors("EchoVideo Model Loader", path, "the EchoVideo transformer"):
            model = load_transformer(path, weight_dtype=weight, compute_dtype=compute, operations=ops,
                                     device=bridge.offload_device("unet"), attention=attention)
        patcher = bridge.wrap(model, kind="unet")
        return io.NodeOutput(ModelBundle(patcher=patcher, path=path, weight_dtype=weight, compute_dtype=compute))


class VaeLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EchoVideoVAELoader",
            display_name="EchoVideo VAE Loader",
            category=CATEGORY,
            description="Loads the CogVideoX-5B VAE (AutoencoderKLCogVideoX) from models/vae: one .safetensors "
                        "or the released diffusers vae/ folder.",
            inputs=[
                io.Combo.Input("vae_name", options=_choices("vae", "(no VAE in models/vae)"),
                               tooltip="CogVideoX VAE file or folder under models/vae."),
                io.Combo.Input("precision", options=bridge.PRECISIONS, default="default",
                               tooltip="VAE dtype. default: ComfyUI's --fp32/--bf16/--fp16-vae flag if given, "
                                       "else bf16 where the device has it (as the reference), else fp32."),
            ],
            outputs=[Vae.Output(display_name="vae", tooltip="CogVideoX VAE for Face Frame Encode and VAE Decode.")],
        )

    @classmethod
    def validate_inputs(cls, vae_name=None, precision=None):
        missing = missing_packages("diffusers")
        package_problem = f"EchoVideo VAE Loader: {MissingPackageError(missing, 'the VAE')}" if missing else None
        return bridge.queue_time_result(package_problem or entry_problem("vae", vae_name),
                                        bridge.choice_problem("EchoVideo VAE Loader", "precision", precision, bridge.PRECISIONS))

    @classmethod
    def execute(cls, vae_name, precision="default") -> io.NodeOutput:
        from echovideo.vae import load_vae

        path = resolve_entry("vae", vae_name)
        dtype = bridge.vae_dtype(precision, bridge.load_device("vae"))
        with named_errors("EchoVideo VAE Loader", path, "a CogVideoX VAE"):
            vae = load_vae(path, dtype=dtype, device=bridge.offload_device("vae"))
        return io.NodeOutput(VaeBundle(patcher=bridge.wrap(vae, kind="vae"), path=path, dtype=dtype))


NODES = [ModelLoader, VaeLoader]
