"""Layer namespaces for building the DiT.

Layers are built as `operations.Linear(in, out, bias=..., dtype=..., device=...)` and so on, the
way ComfyUI core models do, so ComfyUI's casting ops can be passed in. `torch.nn` is the default.
`upcast_ops` stores weights in any dtype (fp8 included) and casts them to the input's dtype
per layer at compute time. `linear` and `fused_linear_gelu_tanh` are the DiT's CPU float32 fast paths (oneDNN calls).
"""
import logging
import types
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def _cast(t, like):
    if t is None:
        return None
    return t.to(device=like.device, dtype=like.dtype)


class _UpcastLinear(nn.Linear):
    def reset_parameters(self):
        return None

    def forward(self, x):
        return F.linear(x, _cast(self.weight, x), _cast(self.bias, x))


class _UpcastConv2d(nn.Conv2d):
    def reset_parameters(self):
        return None

    def forward(self, x):
        return self._conv_forward(x, _cast(self.weight, x), _cast(self.bias, x))


class _UpcastLayerNorm(nn.LayerNorm):
    def reset_parameters(self):
        return None

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, _cast(self.weight, x), _cast(self.bias, x), self.eps)


upcast_ops = types.SimpleNamespace(Linear=_UpcastLinear, Conv2d=_UpcastConv2d, LayerNorm=_UpcastLayerNorm)

FP8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))

DTYPES = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp8_e4m3fn": getattr(torch, "float8_e4m3fn", None),
    "fp8_e5m2": getattr(torch, "float8_e5m2", None),
}


def is_fp8(dtype) -> bool:
    return dtype in FP8_DTYPES


def operations_for(weight_dtype, compute_dtype):
    """torch.nn when weights are stored in the compute dtype, else the upcasting layers."""
    if weight_dtype is None or weight_dtype == compute_dtype:
        return nn
    return upcast_ops


try:  # oneDNN's linear with a fused epilogue (what inductor's CPU backend calls); absent in some builds
    _linear_pointwise = torch.ops.mkldnn._linear_pointwise.default
except (AttributeError, RuntimeError):
    _linear_pointwise = None


# CPUs on which oneDNN's GELU epilogue beat a separate GELU (torch's capability names). Measured inside the
# `large` benchmark's DiT call: about 5% faster on an AVX-512/AMX Intel CPU, 12% slower on an AVX2-only AMD CPU
# (oneDNN's AVX2 tanh-GELU epilogue costs more than the matmul itself there).
FUSED_GELU_CPU_CAPABILITIES = ("AVX512",)


def fused_gelu_pays_off() -> bool:
    return torch.backends.cpu.get_cpu_capability() in FUSED_GELU_CPU_CAPABILITIES


def _is_plain_linear(linear: nn.Module) -> bool:
    """nn.Linear's own forward, not replaced on the instance, with no hooks (the fused call skips the module)."""
    return (type(linear).forward is nn.Linear.forward and "forward" not in vars(linear)
            and not linear._forward_pre_hooks and not linear._forward_hooks)


def _onednn_linear(linear: nn.Module, x: torch.Tensor, attr: str, algorithm: str) -> Optional[torch.Tensor]:
    """oneDNN's linear with the epilogue `attr` ("none", "gelu"), where that applies: float32 CPU inference, a
    plain nn.Linear (no hooks) with float32 CPU weights, oneDNN on, not under torch.compile. None elsewhere
    (ComfyUI's casting layers, other dtypes, GPUs, autograd, tensor subclasses)."""
    if (torch.compiler.is_compiling() or _linear_pointwise is None or not torch.backends.mkldnn.is_available()
            or not torch.backends.mkldnn.enabled or not _is_plain_linear(linear)):
        return None
    weight, bias = linear.weight, linear.bias
    if not all(t is None or (type(t) in (torch.Tensor, nn.Parameter) and t.device.type == "cpu"
                             and t.dtype == torch.float32 and t.layout == torch.strided) for t in (x, weight, bias)):
        return None  # also tensor subclasses (quantized or packed weights): their own kernels
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return None
    try:
        return _linear_pointwise(x, weight, bias, attr, [], algorithm)
    except RuntimeError as e:  # a oneDNN build without this call (some non-x86 CPUs): torch's linear from now on
        from .errors import is_host_out_of_memory

        if is_host_out_of_memory(e):  # the RAM's fault, not the kernel's: the oneDNN path stays
            raise
        _disable_linear_pointwise(e)
        return None


def fused_linear_gelu_tanh(linear: nn.Module, x: torch.Tensor) -> Optional[torch.Tensor]:
    """tanh-GELU(linear(x)) as one oneDNN call, bias and GELU in the matmul's epilogue (about 5% of a CPU DiT
    call), on a CPU where it pays off (`fused_gelu_pays_off`) and where `_onednn_linear` applies; else None."""
    if torch.compiler.is_compiling() or not fused_gelu_pays_off():  # a capability query breaks a compiled graph
        return None
    return _onednn_linear(linear, x, "gelu", "tanh")


def linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """module(x); in float32 CPU inference through oneDNN's matmul, which beat torch's (MKL's) addmm on the DiT's
    projections by 1.1-2x on the AMD CPUs measured (AVX-512 and AVX2), with the same result to float32 rounding.
    Any other layer, dtype or device: the module itself."""
    out = _onednn_linear(module, x, "none", "")
    return out if out is not None else module(x)


def _disable_linear_pointwise(error: Exception) -> None:
    global _linear_pointwise
    _linear_pointwise = None
    logging.getLogger("echovideo").info("oneDNN linear not usable here (%s); torch's linear runs instead",
                                        str(error).splitlines()[0] if str(error) else type(error).__name__)
