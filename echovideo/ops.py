"""Layer namespaces for building the DiT.

Layers are built as `operations.Linear(in, out, bias=..., dtype=..., device=...)` and so on, the
way ComfyUI core models do, so ComfyUI's casting ops can be passed in. `torch.nn` is the default.
`upcast_ops` stores weights in any dtype (fp8 included) and casts them to the input's dtype
per layer at compute time. `linear`, `fused_linear_gelu_tanh` and `matmul_attention` are the DiT's CPU float32
fast paths (oneDNN calls).
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
    if not _onednn_applies(linear.weight, linear.bias, x) or not _is_plain_linear(linear):
        return None
    try:
        return _linear_pointwise(x, linear.weight, linear.bias, attr, [], algorithm)
    except RuntimeError as e:
        _onednn_failed(e)
        return None


def _onednn_applies(*tensors) -> bool:
    """oneDNN's linear is there and on, not under torch.compile, and every tensor (None skipped) is a plain float32
    CPU tensor outside autograd (tensor subclasses, e.g. quantized or packed weights, keep their own kernels)."""
    if (torch.compiler.is_compiling() or _linear_pointwise is None or not torch.backends.mkldnn.is_available()
            or not torch.backends.mkldnn.enabled):
        return False
    present = [t for t in tensors if t is not None]
    if not all(type(t) in (torch.Tensor, nn.Parameter) and t.device.type == "cpu" and t.dtype == torch.float32
               and t.layout == torch.strided for t in present):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in present))


def _onednn_failed(error: RuntimeError) -> None:
    """A oneDNN build without this call (some non-x86 CPUs): torch's kernels from now on. Running out of RAM is
    the RAM's fault, not the kernel's: raised, and the oneDNN path stays."""
    from .errors import is_host_out_of_memory

    if is_host_out_of_memory(error):
        raise error
    _disable_linear_pointwise(error)


def fused_linear_gelu_tanh(linear: nn.Module, x: torch.Tensor) -> Optional[torch.Tensor]:
    """tanh-GELU(linear(x)) as one oneDNN call, bias and GELU in the matmul's epilogue (about 5% of a CPU DiT
    call), on a CPU where it pays off (`fused_gelu_pays_off`) and where `_onednn_linear` applies; else None."""
    if torch.compiler.is_compiling() or not fused_gelu_pays_off():  # a capability query breaks a compiled graph
        return None
    return _onednn_linear(linear, x, "gelu", "tanh")


def linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """module(x); in float32 CPU inference through oneDNN's matmul, which beat torch's (MKL's) addmm on the DiT's
    projections by 1.5-2x on the AMD AVX-512 CPU measured (1.1-1.2x with both limited to AVX2), with the same
    result to float32 rounding. Any other layer, dtype or device: the module itself."""
    out = _onednn_linear(module, x, "none", "")
    return out if out is not None else module(x)


MATMUL_ATTENTION_MIN_KEYS = 512  # 448 keys: even with SDPA at 2 threads; 576-1408: 1.2-1.6x faster than SDPA
MATMUL_ATTENTION_MAX_THREADS = 2  # measured at 1 and 2; more threads: SDPA, which splits heads and query blocks
SCORE_BLOCK_BYTES = 4 << 20  # one (batch, head)'s scores at a time, at most this many bytes of query rows


def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Optional[torch.Tensor]:
    """softmax(q k^T / sqrt(head_dim)) v for [batch, heads, tokens, head_dim] inputs, per (batch, head) and block of
    query rows as two oneDNN matmuls and a softmax; the result is a [batch, heads, tokens, head_dim] view of a
    [batch, tokens, heads, head_dim] tensor (the DiT's output projection then needs no layout copy). In float32 CPU
    inference with at least MATMUL_ATTENTION_MIN_KEYS keys and at most MATMUL_ATTENTION_MAX_THREADS torch threads:
    1.2-1.6x faster than torch's CPU flash-attention kernel on the `large` benchmark's 704 tokens and at 1408 tokens
    (its matrix products are MKL's). The score blocks, a few MiB each, come back from the heap every head, which
    needs glibc's settled thresholds (`host_memory.settle_heap`; the sampling loop sets them). None elsewhere."""
    if (q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or k.shape[2] < MATMUL_ATTENTION_MIN_KEYS
            or torch.get_num_threads() > MATMUL_ATTENTION_MAX_THREADS or not _onednn_applies(q, k, v)):
        return None
    batch, heads, n_queries, head_dim = q.shape
    n_keys = k.shape[2]
    if k.shape[:2] != (batch, heads) or v.shape[:3] != (batch, heads, n_keys) or k.shape[3] != head_dim:
        return None  # SDPA names the mismatch
    out = q.new_empty(batch, n_queries, heads, v.shape[3])
    rows = max(1, min(n_queries, SCORE_BLOCK_BYTES // (4 * n_keys)))
    scale = head_dim ** -0.5
    try:
        for b in range(batch):
            for h in range(heads):
                keys = k[b, h].contiguous()  # oneDNN's weight: [keys, head_dim]
                values_t = v[b, h].t().contiguous()  # [head_dim, keys]
                for start in range(0, n_queries, rows):
                    scores = _linear_pointwise(q[b, h, start:start + rows] * scale, keys, None, "none", [], "")
                    torch.softmax(scores, -1, out=scores)
                    out[b, start:start + rows, h] = _linear_pointwise(scores, values_t, None, "none", [], "")
    except RuntimeError as e:
        _onednn_failed(e)
        return None
    return out.transpose(1, 2)


def _disable_linear_pointwise(error: Exception) -> None:
    global _linear_pointwise
    _linear_pointwise = None
    logging.getLogger("echovideo").info("oneDNN linear not usable here (%s); torch's linear runs instead",
                                        str(error).splitlines()[0] if str(error) else type(error).__name__)
