"""Reads golden files (the published EchoVideo code's numbers on tiny random weights)."""
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open

# the workplace's shared folder: beside this repository's folder, else at its fixed place (a clone elsewhere)
SHARED_CANDIDATES = (Path(__file__).resolve().parents[1].parent / "shared", Path("/work/shared"))
SHARED = next((c for c in SHARED_CANDIDATES if (c / "golden").is_dir()), SHARED_CANDIDATES[0])
DEFAULT_GOLDEN = SHARED / "golden" / "echovideo_tiny.safetensors"
LAYOUT_FILE = DEFAULT_GOLDEN.parent / "echovideo_transformer_layout.json"
ENV_VAR = "ECHOVIDEO_GOLDEN"


class GoldenPathError(RuntimeError):
    """ECHOVIDEO_GOLDEN names no golden file, or one that is not there: no golden check could run."""


def golden_paths():
    """The golden files to test: ECHOVIDEO_GOLDEN (paths joined by ':'), default DEFAULT_GOLDEN when unset.

    Raises GoldenPathError when the variable is set but names no file (empty, ':', whitespace) or names a
    path that is not a file: the golden tests must fail then, not skip or run some other file."""
    env = os.environ.get(ENV_VAR)
    if env is None:
        paths = [str(DEFAULT_GOLDEN)]
    else:
        paths = [p for p in env.split(":") if p.strip()]
        if not paths:
            raise GoldenPathError(
                f"{ENV_VAR}={env!r} names no golden file: expected one or more paths to golden .safetensors "
                f"files joined by ':' (e.g. {ENV_VAR}=/data/a.safetensors:/data/b.safetensors), or leave it "
                f"unset for the default {DEFAULT_GOLDEN}")
    bad = [p for p in paths if not os.path.isfile(p)]
    if bad:
        raise GoldenPathError(
            f"{ENV_VAR}: golden file{'s' if len(bad) > 1 else ''} not found: "
            + ", ".join(repr(p) + (" (a directory)" if os.path.isdir(p) else "") for p in bad)
            + (f" (from {ENV_VAR}={env!r}; expected paths to golden .safetensors files joined by ':')"
               if env is not None else " (the default; set ECHOVIDEO_GOLDEN to paths joined by ':')"))
    return paths


class MissingGolden(str):
    """A golden_params() entry standing for golden files that are not there: Golden() raises its message."""


def golden_params():
    """golden_paths() for parametrizing at collection. When they cannot be found, one MissingGolden entry, so
    that every golden test fails with the reason while the other tests in the module still run."""
    try:
        return golden_paths()
    except GoldenPathError as e:
        return [MissingGolden(str(e))]


class Golden:
    def __init__(self, path):
        if isinstance(path, MissingGolden):
            raise GoldenPathError(str(path))
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise GoldenPathError(f"golden file not found: {self.path!r} ({ENV_VAR} lists golden .safetensors "
                                  f"files joined by ':')")
        with safe_open(self.path, "pt") as f:
            self.meta = json.loads(f.metadata()["meta"])
            self.tensors = {k: f.get_tensor(k) for k in f.keys()}

    def weights(self, prefix):
        """Dequantized float32 weights under `weights.<prefix>.`, keys without the prefix."""
        affine = self.meta["weight_affine"]
        head = f"weights.{prefix}."
        out = {}
        for key, q in self.tensors.items():
            if key.startswith(head):
                scale, offset = (torch.tensor(v, dtype=torch.float32) for v in affine[key])
                out[key[len(head):]] = q.float() * scale + offset
        return out

    def __getitem__(self, key):
        return self.tensors[key]


def assert_close_scaled(actual, expected, rtol=1e-4, atol=1e-4, name=""):
    """|a - e| <= atol * scale + rtol * |e| elementwise, scale = max |e| (tolerances relative to the tensor's scale)."""
    actual, expected = actual.double(), expected.double()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = expected.abs().max().clamp_min(1e-12)
    err = (actual - expected).abs()
    bound = atol * scale + rtol * expected.abs()
    worst = (err - bound).max().item()
    assert worst <= 0, (f"{name}: max abs error {err.max().item():.3e} exceeds bound "
                        f"(scale {scale.item():.3e}, rtol {rtol}, atol {atol} x scale)")
    return (err / scale).max().item()


@torch.no_grad()
def level1_output(model, g):
    """The DiT on the file's level-1 inputs, with the file's RoPE."""
    ctx = model.fuse_identity(g["transformer.in.text_embeds"], g["transformer.in.face_tokens"],
                              g["transformer.in.id_embedding"])
    rope = (g["transformer.in.rope_cos"], g["transformer.in.rope_sin"])
    return model(g["transformer.in.hidden_states"], ctx, g["transformer.in.timestep"], rope)
