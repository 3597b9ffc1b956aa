"""The one attention function of the DiT, with pluggable backends.

Every backend takes q, k, v as [batch, heads, tokens, head_dim] and returns the same layout.
"""
from typing import Callable, Dict

import torch
import torch.nn.functional as F

from .errors import check
from .ops import matmul_attention

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def sdpa_attention(q, k, v):
    """torch's scaled_dot_product_attention; in float32 CPU inference on long sequences the same function as oneDNN
    matmuls and a softmax (`ops.matmul_attention`, faster there). torch.backends.mkldnn.flags(enabled=False)
    keeps torch's kernel."""
    out = matmul_attention(q, k, v)
    if out is not None:
        return out
    return F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False)


def _sage_attention(q, k, v):
    from sageattention import sageattn  # optional dependency

    if q.dtype not in (torch.float16, torch.bfloat16):
        dtype = q.dtype
        return sageattn(q.half(), k.half(), v.half(), tensor_layout="HND").to(dtype)
    return sageattn(q, k, v, tensor_layout="HND")


_BACKENDS: Dict[str, AttentionFn] = {"sdpa": sdpa_attention, "sage": _sage_attention}


def register_attention(name: str, fn: AttentionFn) -> None:
    """Adds a backend, e.g. ComfyUI's optimized_attention through the node bridge."""
    _BACKENDS[name] = fn


def available_attention() -> list:
    names = ["sdpa"]
    try:
        import sageattention  # noqa: F401

        names.append("sage")
    except Exception:  # noqa: BLE001 - not installed, or broken (get_attention says which)
        pass
    names += [n for n in _BACKENDS if n not in ("sdpa", "sage")]
    return names


def get_attention(name_or_fn) -> AttentionFn:
    if callable(name_or_fn):
        return name_or_fn
    name = name_or_fn or "sdpa"
    check(name in _BACKENDS, "attention", repr(name), "one of " + ", ".join(sorted(_BACKENDS)))
    if name == "sage":
        try:
            import sageattention  # noqa: F401
        except ImportError:
            check(False, "attention", "'sage'", "the sageattention package (pip install sageattention), "
                  "or another backend: " + ", ".join(available_attention()))
        except Exception as e:  # noqa: BLE001 - a broken install (e.g. a CUDA library that does not load)
            check(False, "attention", "'sage'", f"a sageattention that imports (it raised {type(e).__name__}: {e}; "
                  "reinstall it), or another backend: " + ", ".join(available_attention()))
    return _BACKENDS[name]
