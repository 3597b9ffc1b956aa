"""VAE decode: tiling keeps the output size and stays close to untiled; per-chunk progress; clear errors."""
import json
import sys

import numpy as np
import pytest
import torch

from echovideo import checkpoint, siglip, tiny
from echovideo import vae as vae_lib
from echovideo.errors import CheckpointError, EchoVideoInputError


@pytest.fixture(scope="module")
def vae():
    return tiny.tiny_vae(tiny.PRESETS["shared"])


@pytest.mark.parametrize("tile_size,bound", [(64, 0.07), (96, 0.04), (128, 0.02)])  # seen: 4.4%, 2.2%, 0.9%
def test_tiled_decode_same_size_close_to_untiled(vae, tile_size, bound):
    z = torch.randn(1, 3, 4, 16, 24, generator=torch.Generator().manual_seed(0))
    full = vae_lib.decode_raw(vae, z, tiling=False)
    tiled = vae_lib.decode_raw(vae, z, tiling=True, tile_size=tile_size)
    assert tiled.shape == full.shape == (1, 3, 9, 128, 192)
    # tiles see less context than the whole frame; on this random tiny VAE the seams differ by a few %,
    # less as tiles grow (more context, fewer seams)
    err = ((tiled - full).abs().max() / full.abs().max()).item()
    print(f"tile {tile_size}: max error / scale {err:.4f}")
    assert err < bound


def test_every_tile_size_gets_a_whole_latent_overlap():
    """For each tile size the node accepts, the decoder's latent stride and its kept pixels agree (diffusers'
    formulas), with an overlap within one latent of a sixth; 560, 1040, 1088 and 1904 once looped forever."""
    for tile_size in range(64, 2049, 16):
        factor = vae_lib.tile_overlap_factor(tile_size, 8, 1 / 6)
        tile_latents = tile_size // 8
        stride = int(tile_latents * (1 - factor))
        kept = tile_size - int(tile_size * factor)
        assert kept == stride * 8, tile_size
        assert abs((tile_latents - stride) - tile_latents / 6) <= 1.5, tile_size


def test_tile_size_without_an_exact_overlap_float_decodes_full_size(vae):
    z = torch.randn(1, 1, 4, 72, 80, generator=torch.Generator().manual_seed(0))
    full = vae_lib.decode_raw(vae, z, tiling=False)
    tiled = vae_lib.decode_raw(vae, z, tiling=True, tile_size=560)  # 12 of 70 latents: no float fits; 11 used
    assert tiled.shape == full.shape == (1, 3, 1, 576, 640)
    assert ((tiled - full).abs().max() / full.abs().max()).item() < 0.02  # seen 0.3%


def test_face_frame_is_encoded_as_the_published_infer_py_does(vae):
    """infer.py turns diffusers' default tiling on before generating, so a face frame above half the VAE's
    training size (240 x 360) is encoded in blended tiles; encode_face_frame does the same (and gets there from
    any tiling a decode left behind). Whole-frame encoding gives other latents at such sizes."""
    face = np.random.default_rng(0).integers(0, 256, (300, 280, 3), dtype=np.uint8)
    width, height = 400, 256
    vae_lib.configure_tiling(vae, True, 64)  # as a decode with another tile size would leave it
    ours = vae_lib.encode_face_frame(vae, face, width, height, 9)
    pixels = vae_lib.first_frame_pixels(face, width, height).unsqueeze(2)
    # diffusers 0.31's enable_tiling() defaults, written out: half the training size (480 x 720), overlaps 1/6, 1/5
    vae.enable_tiling(tile_sample_min_height=240, tile_sample_min_width=360, tile_overlap_factor_height=1 / 6,
                      tile_overlap_factor_width=1 / 5)
    with torch.no_grad():
        published = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor
        vae.disable_tiling()
        whole = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor
    assert ours.shape == (1, 3, whole.shape[1], height // 8, width // 8)
    assert torch.equal(ours[:, 0], published[:, :, 0]) and not torch.equal(ours[:, 0], whole[:, :, 0])
    assert not ours[:, 1:].any()


def test_progress_counts_every_decoder_chunk(vae):
    seen = []
    z = torch.randn(1, 5, 4, 16, 24)
    vae_lib.decode_raw(vae, z, tiling=True, tile_size=64, progress=lambda i, n: seen.append((i, n)))
    total = seen[-1][1]
    assert total == 2 * 3 * 4  # 2 frame chunks x 3 x 4 tiles
    assert [i for i, _ in seen] == list(range(1, total + 1))


def test_images_layout(vae):
    frames = vae_lib.decode_to_images(vae, torch.randn(1, 3, 4, 8, 8))
    assert frames.shape == (9, 64, 64, 3) and frames.min() >= 0 and frames.max() <= 1


@pytest.mark.parametrize("num_frames", [1, 5, 9, 13, 17, 21, 25, 29, 33, 45, 49])
def test_decoded_frame_count_is_what_the_vae_returns(vae, num_frames):
    from echovideo.video import check_video_size, decoded_frame_count, latent_frames

    z = torch.randn(1, latent_frames(num_frames), vae.config.latent_channels, 4, 4)
    assert vae_lib.decode_raw(vae, z, tiling=False).shape[2] == decoded_frame_count(num_frames)
    check_video_size(64, 64, num_frames)  # the library takes any count, as the published pipeline
    if decoded_frame_count(num_frames) != num_frames:
        with pytest.raises(EchoVideoInputError, match=f"num_frames: got {num_frames}, needs 8k\\+1"):
            check_video_size(64, 64, num_frames, exact_frames=True)
    else:
        check_video_size(64, 64, num_frames, exact_frames=True)


def test_bad_tile_size(vae):
    with pytest.raises(EchoVideoInputError, match="tile_size: got 40"):
        vae_lib.decode_raw(vae, torch.randn(1, 1, 4, 8, 8), tiling=True, tile_size=40)


def test_wrong_files_are_named(tmp_path):
    p = tiny.PRESETS["shared"]
    dit = str(tmp_path / "dit.safetensors")
    checkpoint.save_single_file(tiny.tiny_dit(p), tiny.dit_config(p), dit)
    with pytest.raises(CheckpointError, match="dit.safetensors: the config is not a CogVideoX VAE config"):
        vae_lib.load_vae(dit)
    with pytest.raises(CheckpointError, match="dit.safetensors: the config is not a SigLIP vision config"):
        siglip.load_siglip(dit)


def test_siglip_file_without_its_weights_is_named(tmp_path):
    """A file with no config falls back to SigLIP-base's config; without SigLIP's weights it is refused, not
    loaded with random ones."""
    from safetensors.torch import save_file

    p = tiny.PRESETS["shared"]
    other = str(tmp_path / "other.safetensors")
    save_file({"x": torch.zeros(1)}, other)
    with pytest.raises(CheckpointError, match=r"other.safetensors is not a SigLIP vision model.*missing \['embeddings"):
        siglip.load_siglip(other)
    model = tiny.tiny_siglip(p)
    state = {("" if k.startswith("vision_model.") else "vision_model.") + k: v.contiguous()
             for k, v in model.state_dict().items() if ".layers.0." not in k}  # the released key layout
    part = str(tmp_path / "part.safetensors")
    save_file(state, part, metadata={"config": json.dumps(model.config.to_dict()), "format": "pt"})
    with pytest.raises(CheckpointError, match="part.safetensors is not a SigLIP vision model.*layers.0."):
        siglip.load_siglip(part)


def test_siglip_of_another_size_is_named_in_one_short_line(tmp_path):
    """A clip_vision file of another SigLIP (so400m, patch 14, no config: loaded against SigLIP-base's config) is
    refused with the first differing weight and the model needed, not torch's list of every size mismatch."""
    from safetensors.torch import save_file
    from transformers import SiglipVisionConfig, SiglipVisionModel

    other = SiglipVisionModel(SiglipVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                                                 num_attention_heads=4, image_size=28, patch_size=14))
    state = {("" if k.startswith("vision_model.") else "vision_model.") + k: v.contiguous()
             for k, v in other.state_dict().items()}
    path = str(tmp_path / "sigclip_vision_patch14_384.safetensors")
    save_file(state, path)
    with pytest.raises(CheckpointError) as e:
        siglip.load_siglip(path)
    message = str(e.value)
    assert message.startswith(f"{path}: a vision model of another size or patch: ")
    assert "[48, 3, 14, 14], SigLIP's is [768, 3, 16, 16]" in message
    assert "use google/siglip-base-patch16-224" in message and len(message) < 500


def _cache_bytes(cache):
    if torch.is_tensor(cache):
        return cache.numel() * cache.element_size()
    if isinstance(cache, dict):
        return sum(_cache_bytes(v) for v in cache.values())
    return 0


def test_unused_conv_caches_dropped_output_unchanged():
    """The spatial norms' temporal-kernel-1 convs keep no cache between frame chunks; frames are bit-identical."""
    p = tiny.PRESETS["shared"]
    ours = tiny.tiny_vae(p)
    plain = vae_lib.build_vae(tiny.vae_config(p), drop_unused_caches=False)  # diffusers' own forward
    plain.load_state_dict(ours.state_dict())
    assert vae_lib.drop_unused_conv_caches(tiny.tiny_vae(p)) > 0
    z = torch.randn(1, 5, 4, 16, 24, generator=torch.Generator().manual_seed(1))
    caches = {}
    for name, model in (("ours", ours), ("plain", plain)):
        model.decoder.register_forward_hook(lambda m, i, o, name=name: caches.setdefault(name, []).append(o[1]))
    assert torch.equal(vae_lib.decode_raw(ours, z), vae_lib.decode_raw(plain, z))
    kept, plain_kept = _cache_bytes(caches["ours"][0]), _cache_bytes(caches["plain"][0])
    assert 0 < kept < plain_kept / 4, (kept, plain_kept)


def test_untiled_out_of_memory_retries_tiled_and_says_so(vae, monkeypatch):
    calls, logged = [], []
    real = vae_lib.decode_raw

    def decode(vae_, latents, tiling, tile_size, progress):
        calls.append(tiling)
        if not tiling:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        assert sys.exc_info()[0] is None  # retried after the handler: the failed attempt's memory is released
        return real(vae_, latents, tiling, tile_size, progress)

    monkeypatch.setattr(vae_lib, "decode_raw", decode)
    z = torch.randn(1, 3, 4, 16, 24, generator=torch.Generator().manual_seed(2))  # 128 x 192: split by 64 px tiles
    frames = vae_lib.decode_to_images(vae, z, tiling=False, tile_size=64, log=logged.append)
    assert calls == [False, True] and frames.shape == (9, 128, 192, 3)
    assert logged == ["EchoVideo VAE decode ran out of memory untiled; retrying with tiling"]
    with pytest.raises(torch.OutOfMemoryError):  # tiled already, or retry off: the error stands
        vae_lib.decode_to_images(vae, z, tiling=False, retry_tiled_on_oom=False)


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory (simulated)"),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                                                "allocate memory: you tried to allocate 123 bytes")])
def test_out_of_memory_retry_uses_a_tile_that_splits_the_frame(vae, monkeypatch, error):
    """On the GPU or in CPU RAM: a tile size covering the whole frame would repeat the same decode, so the retry
    halves the frame's longer side; a frame no tile splits keeps the error. Other errors are not retried."""
    calls, logged = [], []
    real = vae_lib.decode_raw

    def decode(vae_, latents, tiling, tile_size, progress):
        calls.append((tiling, tile_size))
        if not tiling:
            raise error
        return real(vae_, latents, tiling, tile_size, progress)

    monkeypatch.setattr(vae_lib, "decode_raw", decode)
    z = torch.randn(1, 3, 4, 16, 24, generator=torch.Generator().manual_seed(2))  # 128 x 192
    frames = vae_lib.decode_to_images(vae, z, tiling=False, tile_size=256, log=logged.append)
    assert calls == [(False, 256), (True, 96)] and frames.shape == (9, 128, 192, 3)
    assert logged == ["EchoVideo VAE decode ran out of memory untiled; retrying with tiling (96 px tiles)"]
    calls.clear()
    logged.clear()  # the VAE's default tiles (tile_size None or 0) split a frame larger than them: kept
    big = torch.randn(1, 1, 4, 60, 90, generator=torch.Generator().manual_seed(3))  # 480 x 720
    for default in (None, 0):
        frames = vae_lib.decode_to_images(vae, big, tiling=False, tile_size=default, log=logged.append)
        assert calls[-2:] == [(False, default), (True, None)] and frames.shape[1:] == (480, 720, 3)
    assert logged == ["EchoVideo VAE decode ran out of memory untiled; retrying with tiling"] * 2
    calls.clear()
    with pytest.raises(type(error)):  # 64 x 64: no tile of at least 64 px splits it
        vae_lib.decode_to_images(vae, z[..., :8, :8], tiling=False, log=logged.append)
    assert calls == [(False, None)] and len(logged) == 2  # nothing more logged
    error_kind = RuntimeError("Expected all tensors to be on the same device")
    monkeypatch.setattr(vae_lib, "decode_raw", lambda *a: (_ for _ in ()).throw(error_kind))
    with pytest.raises(RuntimeError, match="same device"):
        vae_lib.decode_to_images(vae, z, tiling=False, log=logged.append)
    assert len(logged) == 2


def test_tiling_settings_do_not_leak_between_calls():
    """The VAE object is shared (ComfyUI caches loader outputs): a decode with a custom tile size must not change
    a later default decode, nor the face-frame encode, which always uses the VAE's default tiles (as the
    published infer.py's enable_tiling())."""
    p = tiny.PRESETS["shared"]
    vae = tiny.tiny_vae(p)
    vae.config.sample_height = vae.config.sample_width = 96  # default tiles of 48 px: the 64 px encode is tiled
    face = np.random.RandomState(0).randint(0, 256, (80, 80, 3)).astype(np.uint8)
    before = vae_lib.encode_face_frame(vae, face, 64, 64, 9)
    z = torch.randn(1, 3, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    default_frames = vae_lib.decode_raw(vae, z, tiling=True)
    vae_lib.decode_raw(vae, z, tiling=True, tile_size=64)
    assert vae.tile_sample_min_height == 64
    assert torch.equal(vae_lib.decode_raw(vae, z, tiling=True), default_frames)
    assert {k: getattr(vae, k) for k in vae_lib.default_tiling(vae)} == vae_lib.default_tiling(vae)
    assert torch.equal(vae_lib.encode_face_frame(vae, face, 64, 64, 9), before)  # after a tiled decode
    vae.enable_tiling(tile_sample_min_height=48, tile_sample_min_width=48, tile_overlap_factor_height=1 / 6,
                      tile_overlap_factor_width=1 / 5)  # diffusers' defaults for this config: half of 96
    pixels = vae_lib.first_frame_pixels(face, 64, 64).unsqueeze(2)
    with torch.no_grad():
        tiled = vae.encode(pixels).latent_dist.mode()
        vae.disable_tiling()
        untiled = vae.encode(pixels).latent_dist.mode()
    assert torch.equal(tiled * vae.config.scaling_factor, before[:, 0].unsqueeze(2))
    assert not torch.equal(untiled * vae.config.scaling_factor, before[:, 0].unsqueeze(2))


@pytest.mark.parametrize("width, height, shape, top, left", [
    (96, 64, (8, 12), 0, 1),   # wider video: m = 8 -> 8 x int(8 * 1.5), left pad (12 - 10) // 2
    (64, 96, (12, 10), 2, 0),  # taller video: int(8 / (2 / 3)) = 12 rows, width kept at 10, top pad 2
    (64, 64, (8, 10), 0, 0),   # square video: each side at least the face's, no padding
])
def test_pad_to_aspect_rule(width, height, shape, top, left):
    """The golden README's rule: min side m; m x int(m r) if r > 1 else int(m / r) x m; top/left pad // 2."""
    face = np.full((8, 10, 3), 200, np.uint8)
    out = vae_lib.pad_to_aspect(face, width, height)
    assert out.shape == (*shape, 3)
    assert (out[top:top + 8, left:left + 10] == 200).all()
    assert out.sum() == face.sum()  # everything else black


def test_load_vae_in_bf16(tmp_path, capfd):
    """load_vae(dtype=bf16) gives bf16 weights: the fp32 file's values rounded to bf16, with no warning
    (diffusers' own .to(dtype) logs a "should be kept in float32: []" warning to the console)."""
    p = tiny.PRESETS["shared"]
    src = tiny.tiny_vae(p)
    path = str(tmp_path / "vae.safetensors")
    checkpoint.save_single_file(src, tiny.vae_config(p), path)
    capfd.readouterr()
    loaded = vae_lib.load_vae(path, dtype=torch.bfloat16)
    assert "float32" not in capfd.readouterr().err
    params = dict(loaded.named_parameters())
    assert params and all(t.dtype == torch.bfloat16 for t in params.values())
    assert loaded.dtype == torch.bfloat16
    want = dict(src.named_parameters())
    assert all(torch.equal(t, want[n].to(torch.bfloat16)) for n, t in params.items())
    assert all(t.dtype == torch.float32 for t in vae_lib.load_vae(path).parameters())  # default stays fp32


def test_progress_hook_is_removed_after_decode(vae):
    """A decode's progress callback is not called by later decodes (its decoder hook is removed)."""
    z = torch.randn(1, 3, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    first, second = [], []
    vae_lib.decode_raw(vae, z, progress=lambda i, n: first.append((i, n)))
    assert first == [(1, 1)]
    vae_lib.decode_raw(vae, z)  # no progress
    vae_lib.decode_raw(vae, z, progress=lambda i, n: second.append((i, n)))
    assert first == [(1, 1)] and second == [(1, 1)]


@pytest.mark.parametrize("tile_size, overlap_latents", [(128, 3), (224, 5), (64, 1)])
def test_custom_tile_overlap_is_rounded_to_whole_latents(vae, tile_size, overlap_latents):
    """The 1/6 overlap is rounded to the nearest whole latent (16 latents / 6 = 2.67 -> 3, 28 / 6 = 4.67 -> 5),
    and diffusers' stride from the factor agrees with it."""
    vae_lib.configure_tiling(vae, True, tile_size)
    tile_latent = tile_size // 8  # 4 blocks: 8x spatial compression
    assert vae.tile_sample_min_height == vae.tile_sample_min_width == tile_size
    assert vae.tile_latent_min_height == tile_latent
    assert round(vae.tile_overlap_factor_height * tile_latent) == overlap_latents
    assert vae.tile_overlap_factor_width == vae.tile_overlap_factor_height
    stride = tile_latent - overlap_latents
    assert int(tile_latent * (1 - vae.tile_overlap_factor_height)) == stride  # diffusers' latent stride
    assert tile_size - int(tile_size * vae.tile_overlap_factor_height) == stride * 8  # and its pixel stride
    # the progress total counts tiles with that stride: 40 latents -> tiles at 0, s, 2s, ... below 40
    n = len(range(0, 40, stride))
    assert vae_lib.decoder_calls_per_video(vae, 2, 40, 40) == n * n
    vae_lib.configure_tiling(vae, False)


def test_decode_region_is_capped_at_the_frame(vae):
    """A video smaller than the tile: one decoder pass sees the whole frame, no more (the memory request)."""
    assert vae_lib.decode_region(vae, 64, 96, True, tile_size=256) == (64, 96)
    assert vae_lib.decode_region(vae, 64, 300, True, tile_size=128) == (64, 128)  # only the wide side is tiled
    t = vae_lib.default_tiling(vae)
    small = (t["tile_sample_min_height"] // 2, t["tile_sample_min_width"] // 2)
    assert vae_lib.decode_region(vae, *small, True) == small  # default tiles, same cap
    assert vae_lib.decode_region(vae, 64, 96, False, tile_size=32) == (64, 96)


def test_progress_total_when_only_one_side_exceeds_the_tile(vae):
    """Tiling applies when either side is larger than a tile: 4 x 24 latents with 8-latent tiles (stride 7)
    -> 1 x 4 tiles per frame chunk."""
    seen = []
    z = torch.randn(1, 5, 4, 4, 24, generator=torch.Generator().manual_seed(5))
    vae_lib.decode_raw(vae, z, tiling=True, tile_size=64, progress=lambda i, n: seen.append((i, n)))
    assert seen == [(i, 2 * 1 * 4) for i in range(1, 9)]  # 2 frame chunks x 1 x 4 tiles
    seen.clear()
    vae_lib.decode_raw(vae, z.transpose(3, 4).contiguous(), tiling=True, tile_size=64,
                       progress=lambda i, n: seen.append((i, n)))
    assert seen == [(i, 8) for i in range(1, 9)]  # tall instead of wide: the same count


def test_out_of_memory_in_vae_decode_tiled_raises_untiled_retries(monkeypatch):
    """An OOM inside the VAE's own decode: untiled -> one tiled retry, logged; already tiled -> the error
    stands, nothing logged (no misleading "retrying with tiling")."""
    vae = tiny.tiny_vae(tiny.PRESETS["shared"])
    real, calls = vae.decode, []

    def decode(z, *a, **k):
        calls.append(vae.use_tiling)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(z, *a, **k)

    monkeypatch.setattr(vae, "decode", decode)
    z = torch.randn(1, 3, 4, 16, 16, generator=torch.Generator().manual_seed(6))  # 128 x 128: split by 64 px tiles
    logged = []
    with pytest.raises(torch.OutOfMemoryError, match="simulated"):
        vae_lib.decode_to_images(vae, z, tiling=True, tile_size=64, log=logged.append)
    assert calls == [True] and logged == []
    calls.clear()
    frames = vae_lib.decode_to_images(vae, z, tiling=False, tile_size=64, log=logged.append)
    assert calls == [False, True] and frames.shape == (9, 128, 128, 3)
    assert logged == ["EchoVideo VAE decode ran out of memory untiled; retrying with tiling"]


def _slow_conv3d_calls(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == "aten::slow_conv3d_forward")


def test_cpu_conv3d_goes_to_onednn_with_the_same_frames():
    """Small float32 conv3d inputs take torch's im2col kernel (about half of the benchmark's decode time)
    unless build_vae routes them to oneDNN; the frames stay the same within float32 rounding."""
    p = tiny.PRESETS["shared"]
    stock = tiny.randomize_(vae_lib.build_vae(tiny.vae_config(p), onednn_conv3d=False), 1)
    routed = tiny.tiny_vae(p)
    z = torch.randn(1, 2, p.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    assert _slow_conv3d_calls(lambda: vae_lib.decode_raw(stock, z)) > 0  # the control: torch's own choice
    assert _slow_conv3d_calls(lambda: vae_lib.decode_raw(routed, z)) == 0
    a, b = vae_lib.decode_raw(stock, z), vae_lib.decode_raw(routed, z)
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()
    face = np.random.RandomState(0).randint(0, 256, (64, 64, 3)).astype(np.uint8)
    enc_a = vae_lib.encode_face_frame(stock, face, 64, 64, 9)
    enc_b = vae_lib.encode_face_frame(routed, face, 64, 64, 9)
    assert (enc_a - enc_b).abs().max() <= 1e-5 * enc_a.abs().max()


def test_onednn_conv3d_keeps_torch_for_other_dtypes():
    routed = tiny.tiny_vae(tiny.PRESETS["shared"])
    conv = next(m for m in routed.modules() if isinstance(m, torch.nn.Conv3d))
    x = torch.randn(1, conv.in_channels, 3, 8, 8)
    ref = torch.nn.functional.conv3d(x.double(), conv.weight.double(), conv.bias.double(), conv.stride,
                                     conv.padding, conv.dilation, conv.groups)
    conv = conv.double()
    assert torch.allclose(conv(x.double()), ref)
    assert _slow_conv3d_calls(lambda: conv(x.double())) > 0  # float64: torch's own kernel (oneDNN has none)


def test_onednn_conv3d_follows_torch_switches(monkeypatch):
    """torch.backends.mkldnn.flags(enabled=False) puts torch's own kernel back; a torch without oneDNN
    leaves the convs alone."""
    p = tiny.PRESETS["shared"]
    routed = tiny.tiny_vae(p)
    z = torch.randn(1, 2, p.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.backends.mkldnn.flags(enabled=False):
        assert _slow_conv3d_calls(lambda: vae_lib.decode_raw(routed, z)) > 0
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert vae_lib.conv3d_through_onednn_on_cpu(vae_lib.build_vae(tiny.vae_config(p), onednn_conv3d=False)) == 0


@pytest.mark.parametrize("shape, stretch", [((400, 1024), "1.45x"), ((1024, 683), "1.50x")])
def test_first_frame_warns_when_the_reference_rule_stretches_the_image(caplog, shape, stretch):
    """The reference's rule reaches the video's aspect only for images near square: a wide panorama, or a portrait
    photo for a landscape video, is resized out of proportion; the log says by how much and how to fix it. A square
    face crop gives no warning."""
    with caplog.at_level("WARNING", logger="echovideo"):
        vae_lib.first_frame_pixels(np.full((512, 512, 3), 200, np.uint8), 848, 480)
        vae_lib.first_frame_pixels(np.full((512, 512, 3), 200, np.uint8), 480, 848)
        assert not caplog.records
        vae_lib.first_frame_pixels(np.full((*shape, 3), 200, np.uint8), 848, 480)
    assert len(caplog.records) == 1
    assert f"the {shape[1]}x{shape[0]} reference image's aspect differs from the 848x480 video's" in caplog.text
    assert f"stretches the first frame {stretch}" in caplog.text
    assert "pad the image to 848:480" in caplog.text


@pytest.mark.parametrize("shape, width, height", [
    ((1024, 683), 848, 480), ((683, 1024), 480, 848), ((400, 1024), 848, 480), ((96, 80), 64, 64),
    ((112, 96), 64, 64)])
def test_keep_proportions_pads_to_the_exact_aspect_and_keeps_the_image_whole(caplog, shape, width, height):
    """keep_proportions (the nodes' and the CLI's setting) pads any image the reference's rule would stretch to the
    video's aspect, centred, never cropping or scaling it: the first frame is undistorted and nothing is logged."""
    image = np.random.default_rng(0).integers(1, 256, (*shape, 3), dtype=np.uint8)
    with caplog.at_level("WARNING", logger="echovideo"):
        padded = vae_lib.pad_to_aspect(image, width, height, keep_proportions=True)
        vae_lib.first_frame_pixels(image, width, height, keep_proportions=True)
    assert not caplog.records
    ph, pw = padded.shape[:2]
    assert abs((pw / ph) / (width / height) - 1) < 0.01
    assert vae_lib.aspect_stretch(*vae_lib.pad_to_aspect(image, width, height).shape[:2], width, height) > 1.02
    top, left = (ph - shape[0]) // 2, (pw - shape[1]) // 2
    assert np.array_equal(padded[top:top + shape[0], left:left + shape[1]], image)
    assert padded.astype(np.int64).sum() == image.astype(np.int64).sum()  # the rest is black


@pytest.mark.parametrize("shape, width, height", [((512, 512), 848, 480), ((512, 512), 480, 848),
                                                  ((8, 10), 96, 64), ((512, 512), 720, 480)])
def test_keep_proportions_leaves_near_square_crops_as_the_reference_pads_them(shape, width, height):
    """Where the reference's rule already reaches the aspect (the aligned 512 x 512 crop at every size), the padding,
    and so the first frame, are the reference's to the bit."""
    image = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    assert np.array_equal(vae_lib.pad_to_aspect(image, width, height, keep_proportions=True),
                          vae_lib.pad_to_aspect(image, width, height))
    assert torch.equal(vae_lib.first_frame_pixels(image, width, height, keep_proportions=True),
                       vae_lib.first_frame_pixels(image, width, height))


@pytest.mark.parametrize("num_frames, latents", [(10, 3), (11, 3), (12, 3), (14, 4)])
def test_face_frame_latents_for_any_frame_count_as_published(vae, num_frames, latents):
    """The published pipeline takes any frame count and makes (n - 1) // 4 + 1 latent frames; so does the library
    (golden files may hold such a count)."""
    face = np.random.RandomState(1).randint(0, 256, (64, 64, 3)).astype(np.uint8)
    image_latents = vae_lib.encode_face_frame(vae, face, 64, 64, num_frames)
    assert image_latents.shape[1] == latents
    assert torch.equal(image_latents[:, :1], vae_lib.encode_face_frame(vae, face, 64, 64, 9)[:, :1])
    assert not image_latents[:, 1:].any()


def test_vae_without_diffusers_names_the_package_and_the_install_command(monkeypatch):
    from echovideo.errors import MissingPackageError

    monkeypatch.setitem(sys.modules, "diffusers", None)  # `from diffusers import ...` fails as if not installed
    with pytest.raises(MissingPackageError) as info:
        vae_lib.build_vae(tiny.vae_config(tiny.PRESETS["shared"]))
    assert str(info.value) == ("the CogVideoX VAE needs the Python package diffusers, which is not installed; install "
                               "the pack's requirements into ComfyUI's Python: python -m pip install -r "
                               "custom_nodes/ComfyUI-EchoVideo/requirements.txt")
