"""EchoVideo Compile Settings and EchoVideo Step Cache (optional speed options).

No Block Swap node: inside ComfyUI the DiT is a ModelPatcher built from comfy.ops layers, so ComfyUI's
own partial loading already streams weights per layer when VRAM is short; a block-swap hook would move
weights behind ModelPatcher's back (it would first load the whole model, then fight its accounting).
Block swap stays a library option (echovideo.offload) for use outside ComfyUI.
"""
from __future__ import annotations

import dataclasses
import shutil

import torch

from echovideo.step_cache import DEFAULT_THRESHOLD, DEFAULT_WARMUP_STEPS, MAX_THRESHOLD

from .bridge import choice_problem, io, queue_time_result
from .types import CompileSettingsData, Model, StepCacheSettings

CATEGORY = "EchoVideo"
MAX_WARMUP_STEPS = 500
BACKENDS = ["inductor", "aot_eager", "eager"]
MODES = ["default", "reduce-overhead", "max-autotune-no-cudagraphs"]


def step_cache_input_problem(threshold, warmup_steps) -> str | None:
    """None, or what is wrong with the Step Cache's inputs (linked values skip the widgets' limits)."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= MAX_THRESHOLD:
        return f"threshold: got {threshold!r}, needs a number from 0 to {MAX_THRESHOLD:g} (0 computes every step)"
    if (isinstance(warmup_steps, bool) or not isinstance(warmup_steps, (int, float))
            or not 2 <= warmup_steps <= MAX_WARMUP_STEPS or warmup_steps != int(warmup_steps)):  # NaN: range first
        return f"warmup_steps: got {warmup_steps!r}, needs an integer from 2 to {MAX_WARMUP_STEPS}"
    return None


def compile_problem(backend: str, device) -> str | None:
    """Why torch.compile with `backend` cannot run on `device`, or None."""
    if backend != "inductor":
        return None
    device = torch.device(device)
    if device.type == "cuda":
        try:
            from torch.utils._triton import has_triton

            ok = has_triton()
        except Exception:
            ok = False
        if not ok:
            return ("the inductor backend needs a working Triton on this GPU (pip install triton, or "
                    "triton-windows on Windows); or pick backend aot_eager / eager")
    elif device.type == "cpu":
        if not any(shutil.which(c) for c in ("g++", "c++", "clang++", "cl")):
            return "the inductor backend on CPU needs a C++ compiler (g++ or clang); or pick aot_eager / eager"
    return None


class CompileSettingsNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EchoVideoCompileSettings",
            display_name="EchoVideo Compile Settings",
            category=CATEGORY,
            description="torch.compile for the EchoVideo Sampler fed by this node's output: compiles the repeated "
                        "DiT block (one graph shared by all blocks), not the whole model. The first run compiles "
                        "(slow, minutes); later runs at the same size are faster. Changing these options does not "
                        "reload the model. inductor needs a working Triton on GPU, or a C++ compiler on CPU. A "
                        "compiled DiT loads whole onto the GPU (no low-VRAM weight streaming): for when it fits.",
            inputs=[
                Model.Input("model", tooltip="EchoVideo Model Loader (or Step Cache) output."),
                io.Combo.Input("backend", options=BACKENDS, default="inductor",
                               tooltip="inductor: generated kernels (fastest; needs Triton on GPU, a C++ compiler "
                                       "on CPU). aot_eager / eager: no code generation (for checking, little gain)."),
                io.Combo.Input("mode", options=MODES, default="default",
                               tooltip="torch.compile mode. reduce-overhead asks for CUDA graphs (more memory; "
                                       "torch may decline them for blocks that update their input in place); "
                                       "max-autotune-no-cudagraphs tunes kernels (much longer first compile)."),
                io.Boolean.Input("dynamic", default=False,
                                 tooltip="On: compile shape-generic kernels up front. Off: torch's default "
                                         "(specialize to the first size, go dynamic after a size change)."),
            ],
            outputs=[Model.Output(display_name="model",
                                  tooltip="The same model, compiled when the Sampler runs it.")],
        )

    @classmethod
    def validate_inputs(cls, backend=None, mode=None):
        return queue_time_result(choice_problem("EchoVideo Compile Settings", "backend", backend, BACKENDS),
                                 choice_problem("EchoVideo Compile Settings", "mode", mode, MODES))

    @classmethod
    def execute(cls, model, backend="inductor", mode="default", dynamic=False) -> io.NodeOutput:
        problem = cls.validate_inputs(backend=backend, mode=mode)
        if problem is not True:
            raise ValueError(problem)
        problem = compile_problem(backend, model.device)
        if problem:
            raise RuntimeError(f"EchoVideo Compile Settings: backend: {problem}")
        settings = CompileSettingsData(backend=backend, mode=None if mode == "default" else mode,
                                       dynamic=True if dynamic else None)
        # a copy: the cached loader output (shared with other branches) stays uncompiled
        return io.NodeOutput(dataclasses.replace(model, compile=settings))


class StepCacheNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EchoVideoStepCache",
            display_name="EchoVideo Step Cache",
            category=CATEGORY,
            description="TeaCache-style step cache for the EchoVideo Sampler: skips DiT evaluations whose input "
                        "barely changed since the last computed step and reuses that step's transformer residual. "
                        "How much a skip may cost is estimated during the run itself, so the threshold means the "
                        "same for every checkpoint. Faster, slightly different video. Applies to the sampler fed "
                        "by this node's output only; off unless this node is in the graph.",
            inputs=[
                Model.Input("model", tooltip="EchoVideo Model Loader (or Compile Settings) output."),
                io.Float.Input("threshold", default=DEFAULT_THRESHOLD, min=0.0, max=MAX_THRESHOLD, step=0.005,
                               round=0.001,
                               tooltip="Largest estimated relative error a skipped step may carry (0.05 = 5% of "
                                       "the transformer output). Higher = more steps skipped (faster) and more "
                                       "drift from the uncached video; 0 = every step computed (identical output)."),
                io.Int.Input("warmup_steps", default=DEFAULT_WARMUP_STEPS, min=2, max=MAX_WARMUP_STEPS,
                             tooltip="First steps always computed (they set the layout and calibrate the error "
                                     "estimate; at least 2); the last step is always computed too."),
            ],
            outputs=[Model.Output(display_name="model", tooltip="The same model with the step cache enabled.")],
        )

    @classmethod
    def execute(cls, model, threshold=DEFAULT_THRESHOLD, warmup_steps=DEFAULT_WARMUP_STEPS) -> io.NodeOutput:
        problem = step_cache_input_problem(threshold, warmup_steps)
        if problem:
            raise ValueError(f"EchoVideo Step Cache: {problem}")
        # a copy: the cached loader output (shared with other branches) keeps no cache setting
        settings = StepCacheSettings(threshold=float(threshold), warmup_steps=int(warmup_steps))
        return io.NodeOutput(dataclasses.replace(model, step_cache=settings))


NODES = [CompileSettingsNode, StepCacheNode]
