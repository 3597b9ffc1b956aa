#!/usr/bin/env python
"""Times the project's full generation outside ComfyUI on tiny random weights of a preset's shapes:
face-frame encode, IITF fusion, the sampling loop and the VAE decode, in one process.

  python benchmarks/bench_sampling.py --preset large --threads 2 --json
  python benchmarks/bench_sampling.py --preset large --frames 49 --json      (VAE scaling run)
  python benchmarks/bench_sampling.py --preset large --steps 50 --step-cache --json   (default threshold)

Targets: sampling loop <= 0.3x the published pipeline's on `large`
(the published figures given with the targets: 0.57-0.62 s loop, 1.7-2.2 s decode, 1.40 GiB peak RSS on this machine kind with
2 threads; measured here side by side, idle: 0.44 s loop, 1.58 s decode, 1676 MiB), peak RSS <= 1.0x,
fusion_calls = 2 with CFG, decode peak RSS within +-10% from 9 to 49 frames (tiling on). Figures: README (latest)
and benchmarks/RESULTS.md (every day).
"""
import argparse
import dataclasses
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from echovideo import pipeline, sampling, tiny  # noqa: E402
from echovideo import vae as vae_lib  # noqa: E402
from echovideo.cli import check_shared_options, check_size_options, require  # noqa: E402
from echovideo.step_cache import DEFAULT_THRESHOLD, StepCache  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _status_mib(field: str):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def reset_rss_peak() -> bool:
    """Restarts the kernel's peak-RSS counter (VmHWM) so that a phase's own peak can be read (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


MAX_THREADS = 1024  # far more and the OpenMP runtime fails to start its threads, or crashes


def check_args(ap, args, preset):
    """Bad values exit with status 2 before any model is built."""
    require(ap, 1 <= args.threads <= MAX_THREADS, "--threads", args.threads,
            f"at least 1 and at most {MAX_THREADS} (this machine has {os.cpu_count()} CPUs)")
    if args.frames is not None:
        check_size_options(ap, preset.width, preset.height, args.frames)
    check_shared_options(ap, args)
    # vae.configure_tiling's rule; omitting --tile-size gives the VAE's default
    require(ap, args.tile_size is None or (args.tile_size >= 64 and args.tile_size % 16 == 0), "--tile-size",
            args.tile_size, "a multiple of 16, at least 64 pixels (omit it for the VAE's default)")
    require(ap, 0 <= args.seed < 2 ** 32, "--seed", args.seed, "0 to 2**32 - 1 (numpy's seed range)")
    if args.compile:
        import torch._dynamo

        backends = torch._dynamo.list_backends(exclude_tags=())
        require(ap, args.compile in backends, "--compile", repr(args.compile), "one of " + ", ".join(backends))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(tiny.PRESETS), default="shared",
                    help="tiny random weights of these shapes (default shared: the golden file's)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2, as in the issue's figures)")
    ap.add_argument("--frames", type=int, default=None, help="override the preset's frame count (8k+1)")
    ap.add_argument("--steps", type=int, default=None, help="override the preset's step count")
    ap.add_argument("--step-cache", type=float, nargs="?", const=DEFAULT_THRESHOLD, default=None,
                    metavar="THRESHOLD", help="also run with the step cache (threshold: default "
                    f"{DEFAULT_THRESHOLD}) and report its DiT calls and deviation from the uncached latents")
    ap.add_argument("--no-tiling", action="store_true", help="decode without spatial tiling")
    ap.add_argument("--tile-size", type=int, default=None, help="decode tile size in pixels (default: the VAE's)")
    ap.add_argument("--compile", default=None, metavar="BACKEND",
                    help="torch.compile the DiT blocks (e.g. inductor); compiled in an untimed warm-up run")
    ap.add_argument("--no-unit-guidance-skip", action="store_true",
                    help="run the unconditional branch also at steps whose guidance scale is 1")
    ap.add_argument("--seed", type=int, default=0, help="inputs and noise seed, 0 to 2**32 - 1 (default 0)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    preset = tiny.PRESETS[args.preset]
    check_args(ap, args, preset)

    torch.set_num_threads(args.threads)
    if args.frames is not None:
        preset = dataclasses.replace(preset, frames=args.frames)
    if args.steps is not None:
        preset = dataclasses.replace(preset, steps=args.steps)

    dit, vae, siglip_model = tiny.tiny_dit(preset), tiny.tiny_vae(preset), tiny.tiny_siglip(preset)
    rng = np.random.RandomState(args.seed)
    face = rng.randint(0, 256, (512, 512, 3)).astype(np.uint8)
    id_embedding = rng.randn(512).astype(np.float32)
    text_pos = torch.from_numpy(rng.randn(1, preset.text_len, preset.text_dim).astype(np.float32))
    text_neg = torch.from_numpy(rng.randn(1, preset.text_len, preset.text_dim).astype(np.float32))

    fusion_calls = 0
    fuse = dit.fuse_identity

    def counted_fuse(*a, **k):
        nonlocal fusion_calls
        fusion_calls += 1
        return fuse(*a, **k)

    dit.fuse_identity = counted_fuse
    use_cfg = preset.guidance > 1.0

    t0 = time.perf_counter()
    face_pos, face_neg = pipeline.face_tokens_pair(siglip_model, face)
    cond = pipeline.fuse_conditioning(dit, text_pos, text_neg, face_pos, face_neg, id_embedding, with_negative=use_cfg)
    fusion_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    image_latents = vae_lib.encode_face_frame(vae, face, preset.width, preset.height, preset.frames)
    encode_s = time.perf_counter() - t0

    loop_options = dict(steps=preset.steps, guidance_scale=preset.guidance, dynamic_cfg=True, seed=args.seed,
                        skip_unit_guidance=not args.no_unit_guidance_skip)
    compile_s = None
    if args.compile:
        from echovideo.compile import compile_blocks

        compile_blocks(dit, backend=args.compile)
        t0 = time.perf_counter()
        # the timed run's own steps, so a batch-1 step (guidance scale 1) is compiled here too
        sampling.sample(dit, cond.positive, cond.negative, image_latents, **loop_options)
        compile_s = round(time.perf_counter() - t0, 2)
    caller = sampling.DiTCaller(dit)
    t0 = time.perf_counter()
    latents = sampling.sample(dit, cond.positive, cond.negative, image_latents, dit_caller=caller, **loop_options)
    loop_s = time.perf_counter() - t0

    result = dict(preset=args.preset, config=dataclasses.asdict(preset), threads=args.threads,
                  face_tokens_and_fusion_s=round(fusion_s, 4), face_frame_encode_s=round(encode_s, 4),
                  loop_s=round(loop_s, 4), per_step_s=round(loop_s / preset.steps, 4), dit_calls=caller.calls,
                  cond_only_calls=caller.cond_only_calls,
                  fusion_calls=fusion_calls, compile=args.compile, compile_warmup_s=compile_s)
    if args.step_cache is not None:
        cache = StepCache(dit, threshold=args.step_cache)
        t0 = time.perf_counter()
        cached = sampling.sample(dit, cond.positive, cond.negative, image_latents, dit_caller=cache, **loop_options)
        result.update(step_cache_threshold=args.step_cache, step_cache_loop_s=round(time.perf_counter() - t0, 4),
                      step_cache_dit_calls=cache.calls,
                      step_cache_call_reduction=round(caller.calls / max(cache.calls, 1), 3),
                      step_cache_max_rel_deviation=float((cached - latents).abs().max() / latents.abs().max()))
    rss_before_decode = peak_rss_mib()
    decode_peak_measured = reset_rss_peak()
    decode_start_rss = _status_mib("VmRSS")
    t0 = time.perf_counter()
    frames = vae_lib.decode_to_images(vae, latents, tiling=not args.no_tiling, tile_size=args.tile_size)
    decode_s = time.perf_counter() - t0
    decode_peak = _status_mib("VmHWM") if decode_peak_measured else None
    tiling = not args.no_tiling
    region = vae_lib.decode_region(vae, preset.height, preset.width, tiling, args.tile_size)
    result.update(decode_s=round(decode_s, 4), decoded_frames=int(frames.shape[0]), tiling=tiling,
                  tile_size=args.tile_size if tiling else None,
                  # the largest region one decoder pass sees: the whole frame when one tile covers it
                  decode_region=list(region), frame_split=tuple(region) != (preset.height, preset.width),
                  peak_rss_before_decode_mib=round(rss_before_decode, 1),
                  # the reset above also restarts ru_maxrss: the run's peak is the larger of the two phases'
                  peak_rss_mib=round(max(rss_before_decode, peak_rss_mib(), decode_peak or 0.0), 1),
                  decode_start_rss_mib=None if decode_start_rss is None else round(decode_start_rss, 1),
                  decode_peak_rss_mib=None if decode_peak is None else round(decode_peak, 1))
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>32}: {v}")


if __name__ == "__main__":
    main()
