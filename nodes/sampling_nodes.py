"""EchoVideo Face Frame Encode, EchoVideo Sampler, EchoVideo VAE Decode."""
from __future__ import annotations

import torch

from echovideo.errors import EchoVideoInputError
from echovideo.guidance import MAX_GUIDANCE_SCALE
from echovideo.vae import check_tile_size
from echovideo.video import MAX_FRAMES, MAX_SIZE, video_size_problems

from . import bridge
from .bridge import io
from .face_nodes import image_to_uint8
from .types import Conditioning, ImageLatents, ImageLatentsData, Model, Vae

CATEGORY = "EchoVideo"


def size_problem(width, height, num_frames):
    """None, or one message naming every size input the model cannot take (ComfyUI shows it on each; with
    validate_inputs ComfyUI skips the widgets' own min/max checks, so the maxima are checked here too)."""
    problems = video_size_problems(width, height, num_frames, exact_frames=True)
    for name, value, most in (("width", width, MAX_SIZE), ("height", height, MAX_SIZE),
                              ("num_frames", num_frames, MAX_FRAMES)):
        if isinstance(value, int) and value > most:
            problems.append(f"{name}: got {value}, needs at most {most}")
    return "; ".join(problems) or None


MAX_STEPS = 500
MAX_CFG = MAX_GUIDANCE_SCALE
SAMPLER_MARK = "echovideo_num_frames"  # the Sampler's LATENT carries it (the video's frame count)


def sampler_input_problem(steps, cfg):
    """None, or what is wrong with the Sampler's steps / cfg (linked values skip the widgets' limits)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        return f"steps: got {steps!r}, needs an integer from 1 to {MAX_STEPS}"
    if isinstance(cfg, bool) or not isinstance(cfg, (int, float)) or not 1.0 <= cfg <= MAX_CFG:  # NaN fails too
        return f"cfg: got {cfg!r}, needs a number from 1.0 to {MAX_CFG} (1.0 turns guidance off)"
    return None


def model_link_problem(config, conditioning, image_latents):
    """None, or which link feeds the Sampler something made for another model, and what to connect instead."""
    width, needs = conditioning.positive.shape[-1], config.text_embed_dim
    if width != needs:
        return (f"conditioning: {width} wide, this model takes {needs}: it was fused by another model; feed IITF "
                "Fusion and the Sampler from the same Model Loader")
    channels, needs = image_latents.latents.shape[2], config.out_channels
    if channels != needs:
        return (f"image_latents: {channels} latent channels, this model takes {needs}: encode the face frame with "
                "the CogVideoX VAE (EchoVideo VAE Loader) in Face Frame Encode")
    return None


class FaceFrameEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EchoVideoFaceFrameEncode",
            display_name="EchoVideo Face Frame Encode",
            category=CATEGORY,
            description="Encodes the reference image as the video's first latent frame (padded to the aspect "
                        "ratio, resized) and sets the video size and length.",
            inputs=[
                Vae.Input("vae", tooltip="EchoVideo VAE Loader output."),
                io.Image.Input("image", tooltip="Reference image: Face Encode's reference_image output."),
                io.Int.Input("width", default=848, min=16, max=MAX_SIZE, step=16,
                             tooltip="Video width, a multiple of 16 (the published EchoVideo demo: 848 x 480)."),
                io.Int.Input("height", default=480, min=16, max=MAX_SIZE, step=16,
                             tooltip="Video height, a multiple of 16."),
                io.Int.Input("num_frames", default=49, min=1, max=MAX_FRAMES, step=8,
                             tooltip="Number of frames, 8k+1 (49 as trained: about 3 s at the reference's 16 fps)."),
            ],
            outputs=[ImageLatents.Output(display_name="image_latents", tooltip="Face-frame latents for the sampler.")],
        )

    @classmethod
    def validate_inputs(cls, width=None, height=None, num_frames=None):
        if None in (width, height, num_frames):
            return True  # linked inputs: checked in execute
        return size_problem(width, height, num_frames) or True

    @classmethod
    def execute(cls, vae, image, width, height, num_frames) -> io.NodeOutput:
        from echovideo.memory import vae_encode_bytes
        from echovideo.vae import encode_face_frame, encode_region

        problem = size_problem(width, height, num_frames)
        if problem:
            raise ValueError(f"EchoVideo Face Frame Encode: {problem}")
        if torch.is_tensor(image) and image.dim() == 4 and image.shape[0] > 1:
            raise ValueError(f"EchoVideo Face Frame Encode: image holds {image.shape[0]} images; the first latent "
                             "frame is one image: connect Face Encode's reference_image (or pick one image)")
        face = image_to_uint8(image)
        region = encode_region(vae.vae, int(height), int(width))
        bridge.load_gpu(vae.patcher, memory_required=vae_encode_bytes(*region, vae.dtype.itemsize, int(height),
                                                                      int(width)))
        latents = encode_face_frame(vae.vae, face, int(width), int(height), int(num_frames), keep_proportions=True)
        return io.NodeOutput(ImageLatentsData(latents=latents.float().to(bridge.intermediate_device()),
                                              width=int(width), height=int(height), num_frames=int(num_frames)))


class InterruptHook:
    """DiT block hook: checks for cancel between blocks (interrupt within a step), then chains the
    previous hook (e.g. block swap)."""

    def __init__(self, inner=None):
        self.inner = inner

    def before(self, index, block):
        bridge.check_interrupt()
        if self.inner is not None:
            self.inner.before(index, block)

    def after(self, index, block):
        if self.inner is not None:
            self.inner.after(index, block)


class Sampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EchoVideoSampler",
            display_name="EchoVideo Sampler",
            category=CATEGORY,
            description="Denoises the video latents (CogVideoX DPM scheduler, v-prediction, classifier-free "
                        "guidance with EchoVideo's dynamic CFG). Output LATENT is [B, C, F, h, w].",
            inputs=[
                Model.Input("model", tooltip="EchoVideo Model Loader output, or a Step Cache / Compile Settings "
                                             "node's."),
                Conditioning.Input("conditioning", tooltip="EchoVideo IITF Fusion output."),
                ImageLatents.Input("image_latents", tooltip="EchoVideo Face Frame Encode output (sets size/length)."),
                io.Int.Input("steps", default=50, min=1, max=MAX_STEPS, tooltip="Denoising steps (reference: 50)."),
                io.Float.Input("cfg", default=6.0, min=1.0, max=MAX_CFG, step=0.1, round=0.01,
                               tooltip="Guidance scale (reference: 6.0). 1.0 turns guidance off (half the work)."),
                io.Boolean.Input("dynamic_cfg", default=True,
                                 tooltip="Ramp the guidance scale over the steps as the reference does."),
                io.Int.Input("seed", default=42, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed (CPU generator). The initial noise equals the published pipeline's "
                                     "for the same seed; its later draws, and so the video, differ (README: "
                                     "Fidelity)."),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="Denoised video latents for VAE Decode.")],
        )

    @classmethod
    def execute(cls, model, conditioning, image_latents, steps=50, cfg=6.0, dynamic_cfg=True, seed=42):
        from echovideo.compile import set_block_compile
        from echovideo.memory import sampling_memory_bytes
        from echovideo.sampling import sample

        problem = sampler_input_problem(steps, cfg)
        if problem:  # linked values skip the widgets' limits
            raise ValueError(f"EchoVideo Sampler: {problem}")
        dit = model.model
        problem = model_link_problem(dit.config, conditioning, image_latents)
        if problem:
            raise ValueError(f"EchoVideo Sampler: {problem}")
        use_cfg = cfg > 1.0
        lat = image_latents.latents
        _, frames, _, h, w = lat.shape
        set_block_compile(dit, model.compile)  # before loading: a compiled DiT loads whole
        cache = getattr(model, "step_cache", None)
        try:
            bridge.load_gpu(model.patcher, memory_required=sampling_memory_bytes(
                dit.config, frames, h, w, batch=2 if use_cfg else 1, dtype=model.compute_dtype,
                step_cache=cache is not None, device=model.device, weight_dtype=model.weight_dtype))
        except bridge.CompiledModelTooLarge:
            set_block_compile(dit, None)  # the shared DiT is not left compiled for the next prompt's nodes
            raise
        progress = bridge.Progress(int(steps))

        def on_step(step, total, latents):
            progress(step, total, latents)
            bridge.check_interrupt()

        caller = None
        if cache is not None:
            from echovideo.step_cache import StepCache

            caller = StepCache(dit, threshold=cache.threshold, warmup_steps=cache.warmup_steps)

        previous_hook = getattr(dit, "block_hook", None)
        dit.block_hook = InterruptHook(previous_hook)
        try:
            latents = sample(dit, conditioning.positive, conditioning.negative if use_cfg else None, lat,
                             steps=int(steps), guidance_scale=float(cfg), dynamic_cfg=bool(dynamic_cfg),
                             seed=int(seed), callback=on_step, dit_caller=caller, device=model.device,
                             skip_unit_guidance=not bridge.cfg1_optimization_disabled(model.patcher))
        finally:
            dit.block_hook = previous_hook
        if caller is not None:
            bridge.log.info("EchoVideo Step Cache: skipped %d of %d DiT calls (threshold %g)", caller.skipped,
                            caller.calls + caller.skipped, cache.threshold)
        samples = latents.float().permute(0, 2, 1, 3, 4).contiguous().to(bridge.intermediate_device())
        return io.NodeOutput({"samples": samples, SAMPLER_MARK: image_latents.num_frames})


class VAEDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EchoVideoVAEDecode",
            display_name="EchoVideo VAE Decode",
            category=CATEGORY,
            description="Decodes EchoVideo latents to frames (IMAGE [frames, H, W, 3] in [0, 1]).",
            inputs=[
                Vae.Input("vae", tooltip="EchoVideo VAE Loader output."),
                io.Latent.Input("latent", tooltip="EchoVideo Sampler output ([B, C, F, h, w])."),
                io.Boolean.Input("tiling", default=True,
                                 tooltip="Decode in overlapping spatial tiles: far less memory, same look."),
                io.Int.Input("tile_size", default=0, min=0, max=2048, step=16,
                             tooltip="Tile size in pixels for tiled decodes (with tiling off, for the tiled retry "
                                     "after running out of memory; half-frame tiles if this one covers the frame): "
                                     "0 = the VAE's default, else a multiple of 16 from 64 (16, 32 and 48 are "
                                     "refused)."),
            ],
            outputs=[io.Image.Output(display_name="frames", tooltip="Video frames, one IMAGE per frame.")],
        )

    @classmethod
    def validate_inputs(cls, tile_size=None):
        """A bad tile size is refused when the prompt is queued, not after sampling."""
        if tile_size is None or tile_size == 0:
            return True
        if isinstance(tile_size, int) and tile_size > MAX_SIZE:  # ComfyUI skips the widget's max check here
            return f"tile_size: got {tile_size}, needs at most {MAX_SIZE} (or 0 for the VAE's default)"
        try:
            check_tile_size(tile_size)
        except EchoVideoInputError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, vae, latent, tiling=True, tile_size=0) -> io.NodeOutput:
        from echovideo.memory import vae_decode_bytes
        from echovideo.vae import decode_region, decode_to_images
        from echovideo.video import SPATIAL_COMPRESSION, frames_decoded_from

        tile_problem = cls.validate_inputs(tile_size=tile_size)
        if tile_problem is not True:  # a linked tile_size is known only now
            raise ValueError(f"EchoVideo VAE Decode: {tile_problem}")
        samples = latent.get("samples") if isinstance(latent, dict) else None
        channels = vae.vae.config.latent_channels
        if samples is None or samples.dim() != 5 or samples.shape[1] != channels:
            raise ValueError(f"EchoVideo VAE Decode: latent is {None if samples is None else tuple(samples.shape)}; "
                             f"needs a video latent [B, {channels}, F, h, w] from EchoVideo Sampler")
        if SAMPLER_MARK not in latent:  # e.g. saved and loaded again, or another model's video latent
            bridge.log.warning("EchoVideo VAE Decode: this latent did not come straight from EchoVideo Sampler; "
                               "decoding it as CogVideoX latents (another video model's latent decodes to noise)")
        height, width = (s * SPATIAL_COMPRESSION for s in samples.shape[3:])
        region = decode_region(vae.vae, height, width, bool(tiling), int(tile_size) or None)
        bridge.load_gpu(vae.patcher, memory_required=vae_decode_bytes(
            *region, vae.dtype.itemsize, frames_decoded_from(samples.shape[2]), height, width))
        progress = bridge.Progress(samples.shape[0], previews=False)

        def on_chunk(done, total):
            progress(done, total)
            bridge.check_interrupt()  # cancel between frame chunks

        frames = decode_to_images(vae.vae, samples.permute(0, 2, 1, 3, 4), tiling=bool(tiling),
                                  tile_size=int(tile_size) or None, progress=on_chunk, log=bridge.log.warning)
        return io.NodeOutput(frames.to(bridge.intermediate_device()))


NODES = [FaceFrameEncode, Sampler, VAEDecode]
