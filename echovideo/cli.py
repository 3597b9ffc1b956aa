"""Generate a video outside ComfyUI from models laid out as in ComfyUI's models/ folder.

  python -m echovideo.cli --models-dir ~/comfy/ComfyUI/models --image photo.jpg \\
      --prompt "A man walks through a busy street..." --out output/echovideo.mp4
"""
import argparse
import contextlib
import importlib.util
import json
import math
import os
import sys
import time

import torch

from .errors import FACE_PACKAGES, INSTALL_REQUIREMENTS, EchoVideoInputError, MissingPackageError, missing_packages
from .guidance import MAX_GUIDANCE_SCALE
from .sampling import RELEASED_SCHEDULER_CONFIG
from .step_cache import DEFAULT_THRESHOLD, MAX_THRESHOLD
from .video import MAX_FRAMES, MAX_SIZE, check_video_size
from .video_io import VIDEO_EXTENSIONS

DEFAULTS = dict(dit="EchoVideo", vae="CogVideoX-5b-vae", t5="EchoVideo-t5-v1_1-xxl",
                siglip="siglip-base-patch16-224")
OUTPUT_EXTENSIONS = VIDEO_EXTENSIONS
MAX_FPS = 240
MAX_GIF_FPS = 50  # GIF frame times are 10 ms ticks, and players slow down delays under 20 ms
PATH_OPTIONS = ("models_dir", "image", "out", "tokenizer", *DEFAULTS)  # "~/..." after "=" reaches us unexpanded
CLI_INSTALL = ("install the requirements: .venv/bin/python -m pip install -r requirements.txt (or bash "
               "scripts/setup_env.sh)")


def missing_package_exit(error: MissingPackageError) -> SystemExit:
    """One error line, with this checkout's install command instead of ComfyUI's."""
    return SystemExit(f"error: {str(error).replace(INSTALL_REQUIREMENTS, CLI_INSTALL)}")


def require(ap, ok, option, got, needs):
    """Exits with status 2 and the usage before any work when an option's value is bad."""
    if not ok:
        ap.error(f"{option}: got {got}, needs {needs}")


def check_size_options(ap, width, height, frames):
    """check_video_size's rule, reported with the command-line option names."""
    try:
        check_video_size(width, height, frames, exact_frames=True)
    except EchoVideoInputError as e:
        require(ap, False, "--" + dict(num_frames="frames").get(e.argument, e.argument), e.got, e.needs)
    for option, value, most in (("--width", width, MAX_SIZE), ("--height", height, MAX_SIZE),
                                ("--frames", frames, MAX_FRAMES)):
        require(ap, value <= most, option, value, f"at most {most} (as the nodes)")


def check_shared_options(ap, args):
    """Options the CLI and benchmarks/bench_sampling.py share (None: not given)."""
    max_steps = RELEASED_SCHEDULER_CONFIG["num_train_timesteps"]
    require(ap, args.steps is None or 1 <= args.steps <= max_steps, "--steps", args.steps,
            f"at least 1 and at most {max_steps} (the scheduler's training timesteps)")
    require(ap, args.step_cache is None or 0.0 <= args.step_cache <= MAX_THRESHOLD, "--step-cache",
            args.step_cache, f"a threshold from 0 to {MAX_THRESHOLD} (default {DEFAULT_THRESHOLD})")


CHECKED_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu", "meta")  # others (privateuseone, npu, ...) pass unchecked


def device_available(device: torch.device) -> bool:
    if device.type == "cpu" or device.type not in CHECKED_DEVICE_TYPES:
        return True
    if device.type == "mps":
        return torch.backends.mps.is_available() and (device.index or 0) == 0
    backend = getattr(torch, device.type, None) if device.type in ("cuda", "xpu") else None
    return backend is not None and backend.is_available() and (device.index or 0) < backend.device_count()


def devices_here() -> str:
    """What --device can be on this machine, e.g. "cpu or cuda (2 devices: cuda:0 to cuda:1)"."""
    found = ["cpu"]
    for kind in ("cuda", "xpu"):
        backend = getattr(torch, kind, None)
        if backend is not None and backend.is_available():
            n = backend.device_count()
            found.append(f"{kind} ({n} device{'s' if n > 1 else ''}: {kind}:0 to {kind}:{n - 1})")
    if torch.backends.mps.is_available():
        found.append("mps")
    return " or ".join(found)


def check_device(ap, name):
    try:
        device = torch.device(name)
    except RuntimeError:
        ap.error(f"--device: got {name!r}, needs a torch device such as cuda, cuda:0 or cpu")
    require(ap, device_available(device), "--device", repr(name),
            f"a device this torch can use here: {devices_here()}")
    if device.type not in CHECKED_DEVICE_TYPES:
        problem = device_problem(device)
        require(ap, problem is None, "--device", repr(name),
                f"a device this torch can use here ({problem}): {devices_here()}")


def device_problem(device: torch.device):
    """None where a tensor can be made on a device type the CLI does not check itself, else what torch said
    (types this build lacks, such as hpu, or privateuseone with no backend registered)."""
    try:
        torch.empty(0, device=device)
        return None
    except Exception as e:  # noqa: BLE001 - RuntimeError, or ModuleNotFoundError for torch.hpu and the like
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def nearest_existing_folder(path: str) -> str:
    """The output's folder, or its nearest existing parent (save_video creates the rest); "" when a part of the
    path is a file, so no folder can be made there."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        if os.path.exists(folder):
            return ""
        folder = os.path.dirname(folder)
    return folder


MODEL_FOLDERS = dict(t5="text_encoders", siglip="clip_vision", vae="vae", dit="diffusion_models")


def face_model_paths(models_dir):
    from .face import FaceModelPaths

    return FaceModelPaths(os.path.join(models_dir, "insightface"), os.path.join(models_dir, "facexlib"))


def model_paths(models_dir, args) -> dict:
    """Each model's path (a name in its models folder, or an absolute path); every missing one in one error."""
    paths, missing = {}, []
    for key, folder in MODEL_FOLDERS.items():
        name = getattr(args, key)
        paths[key] = p = name if os.path.isabs(name) else os.path.join(models_dir, folder, name)
        if not os.path.exists(p):
            missing.append(f"--{key}: {folder} model {name!r} not found at {p}")
    hints = ["pass --t5/--siglip/--vae/--dit NAME (in its models folder) or an absolute path"] if missing else []
    face_missing = [p for p in face_model_paths(models_dir).files if not os.path.isfile(p)]
    missing += [f"face model file {os.path.basename(p)!r} not found at {p}" for p in face_missing]
    if face_missing:
        hints.append("the face models are read from --models-dir's insightface/models/antelopev2/ and facexlib/ "
                     "folders only")
    if missing:
        raise SystemExit("error: " + "; ".join(missing) + ". Put the models there (see the README's model table); "
                         + "; ".join(hints))
    return paths


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m echovideo.cli", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", required=True, help="folder with diffusion_models/, vae/, text_encoders/, "
                                                        "clip_vision/, insightface/, facexlib/")
    ap.add_argument("--image", required=True, help="photo of the person")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--negative-prompt", default="")
    ap.add_argument("--out", default="output/echovideo.mp4",
                    help=".mp4, .webp or .gif; replaced if it exists, only once the video is complete "
                         "(default output/echovideo.mp4)")
    for key, value in DEFAULTS.items():
        ap.add_argument(f"--{key}", default=value, help=f"name in its models folder (default {value})")
    ap.add_argument("--tokenizer", default=None, help="T5 tokenizer folder (default: beside the T5 weights)")
    ap.add_argument("--width", type=int, default=848,
                    help=f"video width in pixels, a multiple of 16, at most {MAX_SIZE} (default 848)")
    ap.add_argument("--height", type=int, default=480,
                    help=f"video height in pixels, a multiple of 16, at most {MAX_SIZE} (default 480)")
    ap.add_argument("--frames", type=int, default=49,
                    help=f"frame count, 8k+1 (1, 9, 17, ..., 49: the model's length; more, up to {MAX_FRAMES}, are "
                         "possible) (default 49)")
    ap.add_argument("--steps", type=int, default=50,
                    help=f"denoising steps, 1 to {RELEASED_SCHEDULER_CONFIG['num_train_timesteps']} (default 50)")
    ap.add_argument("--cfg", type=float, default=6.0,
                    help=f"guidance scale, 1.0 to {MAX_GUIDANCE_SCALE}; 1.0 turns guidance off (default 6.0)")
    ap.add_argument("--no-dynamic-cfg", action="store_true", help="constant guidance instead of the dynamic schedule")
    ap.add_argument("--seed", type=int, default=42, help="random seed, 0 to 2**64 - 1 (default 42)")
    ap.add_argument("--fps", type=int, default=16,
                    help=f"frames per second of the written video, 1 to {MAX_FPS}, at most {MAX_GIF_FPS} for a .gif "
                         "(default 16)")
    ap.add_argument("--face-index", type=int, default=0,
                    help="0 = largest face (nearest the centre if only the fallback RetinaFace detector finds faces)")
    ap.add_argument("--whole-image", action="store_true",
                    help="whole photo for the SigLIP tokens and the reference frame (full body)")
    ap.add_argument("--step-cache", type=float, nargs="?", const=DEFAULT_THRESHOLD, default=None,
                    metavar="THRESHOLD", help=f"skip DiT steps with the step cache (threshold 0 to {MAX_THRESHOLD}: "
                    f"default {DEFAULT_THRESHOLD})")
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    ap.add_argument("--device", default=default_device,
                    help=f"torch device for every model, e.g. cpu, cuda, cuda:1, mps (default here: {default_device})")
    ap.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None,
                    help="compute dtype (default: bf16 on GPU, fp32 on CPU; fp16: CogVideoX-5B can overflow, "
                         "prefer bf16)")
    args = ap.parse_args(argv)
    for name in PATH_OPTIONS:
        if getattr(args, name) is not None:
            setattr(args, name, os.path.expanduser(getattr(args, name)))
    check_args(ap, args)
    return args


def check_args(ap, args):
    check_size_options(ap, args.width, args.height, args.frames)
    check_shared_options(ap, args)
    require(ap, math.isfinite(args.cfg) and 1.0 <= args.cfg <= MAX_GUIDANCE_SCALE, "--cfg", args.cfg,
            f"a finite number, at least 1.0 (1.0 turns guidance off) and at most {MAX_GUIDANCE_SCALE}")
    require(ap, 1 <= args.fps <= MAX_FPS, "--fps", args.fps, f"at least 1 and at most {MAX_FPS}")
    require(ap, args.face_index >= 0, "--face-index", args.face_index, "0 (largest face) or more")
    require(ap, 0 <= args.seed < 2 ** 64, "--seed", args.seed, "0 to 2**64 - 1 (as the Sampler node)")
    ext = os.path.splitext(args.out)[1].lower()
    require(ap, ext in OUTPUT_EXTENSIONS, "--out", repr(args.out), "a " + ", ".join(OUTPUT_EXTENSIONS) + " file name")
    require(ap, ext != ".gif" or args.fps <= MAX_GIF_FPS, "--fps", args.fps,
            f"at most {MAX_GIF_FPS} for a .gif (its frame times are 10 ms steps, and players slow down shorter "
            "ones); write a .mp4 or .webp for more")
    require(ap, ext != ".mp4" or importlib.util.find_spec("av") is not None, "--out", repr(args.out),
            "PyAV for .mp4 (pip install av), or a .webp / .gif file name")
    writable = nearest_existing_folder(args.out)
    require(ap, not os.path.isdir(args.out) and bool(writable) and os.access(writable, os.W_OK), "--out",
            repr(args.out), "a file name in a folder you can write to (not a folder)")
    require(ap, os.path.isfile(args.image), "--image", repr(args.image), "an existing image file")
    require(ap, args.tokenizer is None or os.path.isdir(args.tokenizer), "--tokenizer", repr(args.tokenizer),
            "an existing tokenizer folder")
    require(ap, os.path.isdir(args.models_dir), "--models-dir", repr(args.models_dir),
            "an existing folder")
    check_device(ap, args.device)
    missing = missing_packages("cv2", *FACE_PACKAGES, "diffusers", "transformers", "sentencepiece")
    if missing:  # before any model loads, not minutes in at the step that needs it
        raise missing_package_exit(MissingPackageError(missing, "the generation"))


def check_out_writable(out: str):
    """Creates (and removes) --out before any model loads, so a file system that refuses it (read-only, /proc,
    full) fails now, not after the generation. Leaves nothing behind: the folders it made are removed again, an
    existing file is opened for appending and not changed, and a link to a missing file is not probed."""
    if os.path.lexists(out) and not os.path.exists(out):
        return  # a dangling link: opening it would create its target
    made = []
    existed = os.path.exists(out)
    try:
        folder = os.path.dirname(os.path.abspath(out))
        while not os.path.isdir(folder) and os.path.dirname(folder) != folder:  # stops at a missing drive's root
            made.append(folder)
            folder = os.path.dirname(folder)
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "ab"):
            pass
        if not existed:
            os.remove(out)
    except OSError as e:
        raise SystemExit(f"error: --out: {out} cannot be written ({type(e).__name__}: {e}); pick another "
                         "file name or folder") from None
    finally:
        for made_folder in made:  # deepest first
            with contextlib.suppress(OSError):
                os.rmdir(made_folder)


@contextlib.contextmanager
def reading(option: str, path: str, hint: str = "is it the right file, completely downloaded? Download it again"):
    """A model or tokenizer that cannot be read (cut short, corrupt, not a model): one line naming the option."""
    from safetensors import SafetensorError

    from .errors import CheckpointError

    try:
        yield
    except (SafetensorError, json.JSONDecodeError, OSError) as e:
        raise SystemExit(f"error: {option}: {path} could not be read ({type(e).__name__}: {e}); {hint}") from None
    except CheckpointError as e:  # the right file format, the wrong model: its fix in the CLI's words
        raise SystemExit(f"error: {option}: {in_cli_words(str(e))}") from None


# the library's fixes name ComfyUI nodes (its loaders' messages); the CLI's are options (longest phrases first)
NODE_FIXES_AS_OPTIONS = (
    ("load it with EchoVideo VAE Loader, and pick the EchoVideo transformer here",
     "pass it as --vae, and pass the EchoVideo transformer as --dit"),
    ("load it with EchoVideo VAE Loader", "pass it as --vae"),
    ("load it with EchoVideo T5 Loader, or core Load CLIP (type sd3)", "pass it as --t5"),
    ("it belongs in models/clip_vision, picked in EchoVideo Face Encoder Loader", "pass it as --siglip"),
    ("pick the EchoVideo transformer here", "pass the EchoVideo transformer as --dit"),
    (", or load a t5xxl file with core Load CLIP (type sd3) into Text Encode's clip input", ""),
    ("pick the T5 v1.1 XXL encoder", "pass the T5 v1.1 XXL encoder as --t5"),
)


def in_cli_words(message: str) -> str:
    for node_fix, option_fix in NODE_FIXES_AS_OPTIONS:
        message = message.replace(node_fix, option_fix)
    return message


def main(argv=None):
    try:
        args = parse_args(argv)
        from .errors import CheckpointError
        from .face.errors import FaceError, FaceModelLoadError, FaceModelMissingError

        try:
            generate_video(args)
        except (FaceError, FaceModelMissingError, FaceModelLoadError, EchoVideoInputError, CheckpointError) as e:
            raise SystemExit(f"error: {with_option_names(str(e))}") from None  # the photo, a model file or an option
        except MissingPackageError as e:
            raise missing_package_exit(e) from None
    except KeyboardInterrupt:  # the video is written to a temporary file and renamed: --out is never half-written
        print("\ninterrupted: no video written", file=sys.stderr)
        raise SystemExit(130) from None


LIBRARY_INPUT_OPTIONS = {"image": "--image", "face_index": "--face-index"}


def with_option_names(message: str) -> str:
    """A library message that starts with an input's name ("image: ...") names the command-line option instead,
    there and wherever else the name appears as such (face_index)."""
    for name, option in LIBRARY_INPUT_OPTIONS.items():
        if message.startswith((name + ":", name + " ")):
            rest = message[len(name):]
            return option + (rest.replace(name, option) if "_" in name else rest)
    return message


def generate_video(args):
    from . import face, pipeline, text
    from . import vae as vae_lib
    from .checkpoint import load_transformer
    from .ops import DTYPES
    from .siglip import load_siglip
    from .step_cache import StepCache
    from .video_io import save_video

    on_cpu = torch.device(args.device).type == "cpu"
    dtype = DTYPES[args.dtype] if args.dtype else (torch.float32 if on_cpu else torch.bfloat16)
    m = args.models_dir
    paths = model_paths(m, args)
    tok_dir = args.tokenizer or text.find_tokenizer_beside(paths["t5"])
    if tok_dir is None:
        raise SystemExit(f"error: no T5 tokenizer beside {paths['t5']}; pass --tokenizer FOLDER")
    if dtype == torch.float16:
        print("warning: --dtype fp16: CogVideoX-5B can overflow in fp16 (NaN or black frames); the reference "
              "computes in bf16 (--dtype bf16)", file=sys.stderr)
    check_out_writable(args.out)
    start = time.time()

    photo = face.load_image_file(args.image)
    face_models = face.load_face_models(face_model_paths(m), device=args.device)
    ident = face.extract_identity(face_models, photo, face_index=args.face_index, whole_image=args.whole_image)
    del face_models  # with the cache's reference dropped next, the face models are freed before the T5 loads
    face.release_face_models()
    print(f"face: {ident.detector}, face {args.face_index} of {getattr(ident, 'face_count', '?')}")

    with reading("--tokenizer" if args.tokenizer else "the tokenizer beside --t5", tok_dir,
                 "it needs the released tokenizer/ folder's files (pass --tokenizer FOLDER)"):
        tokenizer = text.load_tokenizer(tok_dir)
    with reading("--t5", paths["t5"]):
        t5 = text.load_t5_encoder(paths["t5"], dtype=dtype, device=args.device)
    text_pos = text.encode_prompt(t5, tokenizer, args.prompt).float()
    text_neg = text.encode_prompt(t5, tokenizer, args.negative_prompt).float()
    del t5

    with reading("--siglip", paths["siglip"]):
        siglip_model = load_siglip(paths["siglip"], dtype=dtype, device=args.device)  # as the node: compute dtype
    with reading("--vae", paths["vae"]):
        vae = vae_lib.load_vae(paths["vae"], dtype=torch.float32 if on_cpu else dtype, device=args.device)
    with reading("--dit", paths["dit"]):
        dit = load_transformer(paths["dit"], compute_dtype=dtype, device=args.device)
    caller = StepCache(dit, threshold=args.step_cache) if args.step_cache is not None else None

    # a terminal: one progress line, rewritten; a log file: one line per step
    line_start, line_end = ("\r", "") if sys.stderr.isatty() else ("", "\n")

    def progress(step, total, _latents):
        print(f"{line_start}step {step}/{total}", end=line_end, file=sys.stderr, flush=True)

    frames = pipeline.generate(dit, vae, siglip_model, text_pos, text_neg, ident.face_crop, ident.id_embedding,
                               args.width, args.height, args.frames, steps=args.steps, guidance_scale=args.cfg,
                               dynamic_cfg=not args.no_dynamic_cfg, seed=args.seed,
                               reference_image=ident.reference_image, callback=progress, dit_caller=caller)
    if not line_end:
        print(file=sys.stderr)  # ends the terminal's progress line
    if not torch.isfinite(frames).all():
        raise SystemExit("error: the generated frames hold NaN or infinite values, so nothing was written (an "
                         "overflow: with --dtype fp16, use --dtype bf16; else try a lower --cfg)")
    try:
        save_video(frames, args.out, fps=args.fps)
    except OSError as e:
        raise SystemExit(f"error: --out: {args.out} could not be written ({type(e).__name__}: {e})") from None
    print(f"wrote {args.out}: {frames.shape[0]} frames {args.width}x{args.height} in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
