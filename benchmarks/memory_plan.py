#!/usr/bin/env python
"""Memory plan for the real-size EchoVideo DiT, built on the meta device (no allocation).

Prints the weight bytes per storage dtype and, per resolution, the activation peak of one block and of
attention (CFG batched = batch 2, or batch 1 with guidance 1 / sequential branches), in bf16 activations;
and the real CogVideoX VAE decoder's causal-conv cache carried from one frame chunk to the next (run on the
meta device), with diffusers' stock convs and with this project's (no unused temporal-kernel-1 caches).

  python benchmarks/memory_plan.py [--markdown]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from echovideo.config import RELEASED_CONFIG  # noqa: E402
from echovideo.memory import attention_bytes, block_activation_bytes, measure_vae_decode_peak, video_tokens  # noqa: E402
from echovideo.transformer import EchoVideoTransformer  # noqa: E402
from echovideo.vae import RELEASED_VAE_CONFIG, build_vae  # noqa: E402

RESOLUTIONS = [(480, 640, 49), (480, 848, 49), (480, 480, 49), (848, 480, 49), (640, 480, 49)]  # the published demo sizes
STORAGE = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8_e4m3fn": 1, "fp8_e5m2": 1}
GIB = 1024 ** 3


def weight_bytes():
    with torch.device("meta"):
        model = EchoVideoTransformer(RELEASED_CONFIG)
    n = sum(p.numel() for p in model.parameters())
    block = sum(p.numel() for p in model.transformer_blocks[0].parameters())
    return n, block


def _tensor_bytes(tree, act_bytes):
    if torch.is_tensor(tree):
        return tree.numel() * act_bytes
    if isinstance(tree, dict):
        return sum(_tensor_bytes(v, act_bytes) for v in tree.values())
    return 0


def vae_chunk_cache_bytes(height, width, act_bytes=2):
    """(stock diffusers, this project): bytes of the decoder's conv cache after the first frame chunk
    (3 latent frames, as for 49 frames) of a height x width decode."""
    with torch.device("meta"):
        ours = build_vae(RELEASED_VAE_CONFIG, device="meta")
        stock = build_vae(RELEASED_VAE_CONFIG, device="meta", drop_unused_caches=False)
    z = torch.empty(1, RELEASED_VAE_CONFIG["latent_channels"], 3, height // 8, width // 8, device="meta")
    with torch.no_grad():
        return tuple(_tensor_bytes(vae.decoder(z)[1], act_bytes) for vae in (stock, ours))


def vae_decode_peak_bytes(height, width, latent_frames=13, tiling=False, act_dtype=torch.bfloat16):
    """Peak bytes of this project's whole decode (13 latent frames = 49 frames, the float32 copy of the video
    included), measured with MetaPeak on the released VAE: untiled, or in the default tiles."""
    vae = build_vae(RELEASED_VAE_CONFIG, dtype=act_dtype, device="meta")
    return measure_vae_decode_peak(vae, height, width, latent_frames, tiling)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--markdown", action="store_true", help="also print the README's tables")
    args = ap.parse_args(argv)
    cfg = RELEASED_CONFIG
    n, block = weight_bytes()
    print(f"parameters: {n:,} ({n / 1e9:.2f} B); one block: {block:,}")
    print("\nweights per storage dtype:")
    rows = []
    for name, b in STORAGE.items():
        rows.append((name, n * b / GIB, block * b / GIB))
        print(f"  {name:>11}: {n * b / GIB:6.2f} GiB total, {block * b / 2**20:7.1f} MiB per block")
    print("\nactivations (bf16) per resolution, HxWxframes:")
    print("  resolution     tokens  block peak b=2  block peak b=1  flash attn b=2  math attn b=2")
    activations = []  # (size, tokens, GiB: block b=2, block b=1, flash attention b=2, math attention b=2)
    for h, w, f in RESOLUTIONS:
        s = video_tokens(cfg, h, w, f)
        activations.append((f"{h}x{w}x{f}", s, *(x / GIB for x in (
            block_activation_bytes(cfg, s, 2), block_activation_bytes(cfg, s, 1), attention_bytes(cfg, s, 2),
            attention_bytes(cfg, s, 2, materialised=True)))))
    for size, s, b2, b1, flash, math in activations:
        print(f"  {size:<14} {s:>6}  {b2:10.2f} GiB  {b1:10.2f} GiB  {flash:10.2f} GiB  {math:10.2f} GiB")
    print("\nVAE decode (bf16): conv cache carried between frame chunks, stock diffusers -> this project; "
          "this project's whole 49-frame decode peak")
    tile = (RELEASED_VAE_CONFIG["sample_height"] // 2, RELEASED_VAE_CONFIG["sample_width"] // 2)
    sizes = []  # a size and its transpose share a row (the same memory)
    for h, w, _ in RESOLUTIONS:
        if (h, w) not in sizes and (w, h) not in sizes:
            sizes.append((h, w))
    decode_rows = []  # (label, stock cache, our cache, whole decode peak) in GiB
    for h, w in sizes + [tile]:
        stock, ours = vae_chunk_cache_bytes(h, w)
        if (h, w) == tile:  # the tile row's whole decode: 480x848 in the default tiles
            label, peak = f"one default tile ({h}x{w})", vae_decode_peak_bytes(480, 848, tiling=True)
        else:
            label = f"{h}x{w}, untiled" if h == w else f"{h}x{w} or {w}x{h}, untiled"
            peak = vae_decode_peak_bytes(h, w)
        decode_rows.append((label, stock / GIB, ours / GIB, peak / GIB))
        print(f"  {label}: {stock / GIB:.2f} GiB -> {ours / GIB:.2f} GiB; whole decode {peak / GIB:.2f} GiB")
    if args.markdown:
        act = block_activation_bytes(cfg, video_tokens(cfg, 480, 848, 49), 2) / GIB
        print("\n| weights | DiT weights | + block peak at 480x848x49 (CFG batch 2) | fits fully on |")
        print("|---|---|---|---|")
        for name, total, _ in rows:
            need = total + act
            fits = ", ".join(f"{g} GB" for g in (12, 16, 24, 80) if need * GIB < g * 1e9 * 0.9) or "none (offload)"
            print(f"| {name} | {total:.1f} GiB | {need:.1f} GiB | {fits} |")
        print("\n| HxWxframes | tokens | block b=2 | block b=1 | flash attn b=2 | math attn b=2 |")
        print("|---|---|---|---|---|---|")
        for size, s, b2, b1, flash, math in activations:
            print(f"| {size} | {s:,} | {b2:.2f} GiB | {b1:.2f} GiB | {flash:.2f} GiB | {math:.1f} GiB |")
        print("\n| decode of | cache, stock diffusers | cache, this project | whole 49-frame decode, this project |")
        print("|---|---|---|---|")
        for label, stock, ours, peak in decode_rows:
            whole = f"{peak:.2f} GiB" + (" (480x848 in tiles)" if label.startswith("one default tile") else "")
            print(f"| {label} | {stock:.2f} GiB | {ours:.2f} GiB | {whole} |")


if __name__ == "__main__":
    main()
