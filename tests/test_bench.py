"""The benchmark script's interface (names other checks rely on): --preset, --json and its fields."""
import importlib.util
import json
import os

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "bench_sampling.py")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_sampling", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_shared_preset_json_fields(bench, capsys):
    bench.main(["--preset", "shared", "--threads", "1", "--steps", "2", "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("loop_s", "per_step_s", "decode_s", "peak_rss_mib", "dit_calls", "fusion_calls", "config"):
        assert key in out
    assert out["dit_calls"] == 2 and out["fusion_calls"] == 2  # CFG: fusion once per branch
    assert out["config"]["layers"] == 2 and out["decoded_frames"] == 9
    # the whole run's peak, though the decode's peak counter was restarted
    assert out["peak_rss_mib"] >= max(out["peak_rss_before_decode_mib"], out["decode_peak_rss_mib"])
    assert abs(out["per_step_s"] - out["loop_s"] / 2) <= 1e-4 and out["threads"] == 1  # both rounded to 1e-4


def test_unit_guidance_skip_is_reported_and_can_be_turned_off(bench, capsys):
    """6 steps: step 2 (guidance scale 1) runs the conditional row alone, reported as cond_only_calls; with
    --no-unit-guidance-skip every step runs both rows."""
    on, _ = _main_json(bench, capsys, "--steps", "6")
    off, _ = _main_json(bench, capsys, "--steps", "6", "--no-unit-guidance-skip")
    assert on["dit_calls"] == off["dit_calls"] == 6
    assert on["cond_only_calls"] == 1 and off["cond_only_calls"] == 0


def test_presets_match_the_issue(bench):
    from echovideo.tiny import PRESETS

    shape = lambda p: (p.layers, p.heads, p.head_dim, p.latent_channels, p.text_dim, p.text_len, p.frames,  # noqa: E731
                       p.height, p.width, p.steps, p.guidance)
    assert shape(PRESETS["shared"]) == (2, 2, 16, 4, 64, 16, 9, 64, 64, 4, 6.0)
    assert shape(PRESETS["large"]) == (4, 4, 32, 16, 128, 32, 25, 128, 192, 6, 6.0)


class ModelBuilt(Exception):
    pass


@pytest.fixture
def no_models(bench, monkeypatch):
    """Building a model raises ModelBuilt: a bad option must fail before that."""
    def built(*_):
        raise ModelBuilt
    monkeypatch.setattr(bench.tiny, "tiny_dit", built)
    return bench


def test_valid_options_reach_the_models(no_models):
    with pytest.raises(ModelBuilt):
        no_models.main(["--frames", "25", "--steps", "1", "--step-cache", "0", "--tile-size", "64", "--threads", "1"])


@pytest.mark.parametrize("option, value, says", [
    ("--threads", "0", "at least 1"), ("--threads", "100000", "at most 1024"), ("--frames", "0", "8k+1"), ("--frames", "10", "8k+1"),
    ("--steps", "0", "at least 1"), ("--step-cache", "-0.1", "from 0 to 1"), ("--step-cache", "1.5", "from 0 to 1"),
    ("--tile-size", "0", "at least 64"), ("--tile-size", "48", "at least 64"), ("--tile-size", "100", "multiple of 16"),
    ("--seed", "-1", "seed range"), ("--seed", str(2 ** 32), "seed range"), ("--tile-size", "72", "multiple of 16"),
    ("--compile", "nope", "inductor"),
])
def test_bad_option_fails_before_building_models(no_models, capsys, option, value, says):
    with pytest.raises(SystemExit) as exit_info:
        no_models.main(["--preset", "shared", option, value])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "usage:" in err
    assert f"{option}: got" in err and says in err


# --- mutation sweep (benchmark script): overrides reach the run, the step-cache branch, decode and compile options ---


def test_frame_and_step_overrides_reach_the_models(no_models, monkeypatch):
    seen = []

    def built(preset, *_):
        seen.append(preset)
        raise ModelBuilt

    monkeypatch.setattr(no_models.tiny, "tiny_dit", built)
    with pytest.raises(ModelBuilt):
        no_models.main(["--preset", "shared", "--frames", "17", "--steps", "3", "--threads", "1"])
    assert (seen[0].frames, seen[0].steps, seen[0].layers) == (17, 3, 2)


def _main_json(bench, capsys, *argv):
    import torch

    threads = torch.get_num_threads()
    try:
        bench.main(["--preset", "shared", "--threads", "1", "--json", *argv])
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1]), used


def test_step_cache_run_and_decode_options(bench, capsys, monkeypatch):
    """--step-cache 0 runs the cached loop too: every step computed, so the same DiT calls and no deviation;
    --no-tiling and --tile-size reach the decode; --threads sets torch's thread count."""
    decodes = []
    real = bench.vae_lib.decode_to_images
    monkeypatch.setattr(bench.vae_lib, "decode_to_images",
                        lambda vae, latents, **kw: (decodes.append(kw), real(vae, latents, **kw))[1])
    out, threads = _main_json(bench, capsys, "--steps", "3", "--step-cache", "0", "--no-tiling", "--tile-size", "64")
    assert threads == 1
    assert decodes == [dict(tiling=False, tile_size=64)]
    # the JSON tells an untiled run from a tiled one: no tile size without tiling, the whole frame in one pass
    assert (out["tiling"], out["tile_size"], out["decode_region"], out["frame_split"]) == (False, None, [64, 64], False)
    assert out["step_cache_threshold"] == 0.0 and out["dit_calls"] == 3 and out["step_cache_dit_calls"] == 3
    assert out["step_cache_call_reduction"] == 1.0 and out["step_cache_max_rel_deviation"] == 0.0


def test_step_cache_run_skips_at_a_high_threshold(bench, capsys, monkeypatch):
    """At threshold 1 the cached run is built with that threshold, skips steps and reports fewer DiT calls, their
    ratio and a non-zero deviation; the decode is tiled by default."""
    made, decodes = [], []
    real_cache, real = bench.StepCache, bench.vae_lib.decode_to_images
    monkeypatch.setattr(bench, "StepCache", lambda dit, **kw: (made.append(kw), real_cache(dit, **kw))[1])
    monkeypatch.setattr(bench.vae_lib, "decode_to_images",
                        lambda vae, latents, **kw: (decodes.append(kw), real(vae, latents, **kw))[1])
    out, _ = _main_json(bench, capsys, "--steps", "6", "--step-cache", "1.0")
    assert made == [dict(threshold=1.0)] and decodes == [dict(tiling=True, tile_size=None)]
    # the VAE's default tile covers the preset's 64x64 frame: tiling on, yet one pass per frame
    assert (out["tiling"], out["tile_size"], out["decode_region"], out["frame_split"]) == (True, None, [64, 64], False)
    assert out["step_cache_dit_calls"] < out["dit_calls"] == 6
    assert out["step_cache_call_reduction"] == round(6 / out["step_cache_dit_calls"], 3)
    assert out["step_cache_max_rel_deviation"] > 0


def test_step_cache_flag_without_value_is_the_default_threshold(bench, monkeypatch):
    from echovideo.step_cache import DEFAULT_THRESHOLD

    seen = []

    def stop(*_):
        raise ModelBuilt

    real_check = bench.check_args
    monkeypatch.setattr(bench, "check_args", lambda ap, args, preset: (seen.append(args), real_check(ap, args, preset)))
    monkeypatch.setattr(bench.tiny, "tiny_dit", stop)
    with pytest.raises(ModelBuilt):
        bench.main(["--preset", "shared", "--step-cache"])
    assert seen[0].step_cache == DEFAULT_THRESHOLD


def test_guidance_one_fuses_once_and_compile_backend_is_passed(bench, capsys, monkeypatch):
    """Without CFG (guidance 1) the identity is fused for the positive branch only; --compile hands its backend
    to compile_blocks and runs an untimed warm-up."""
    import dataclasses

    import echovideo.compile

    monkeypatch.setitem(bench.tiny.PRESETS, "shared", dataclasses.replace(bench.tiny.PRESETS["shared"], guidance=1.0))
    compiled = []
    monkeypatch.setattr(echovideo.compile, "compile_blocks", lambda dit, **kw: compiled.append(kw))
    out, _ = _main_json(bench, capsys, "--steps", "1", "--compile", "eager")
    assert out["fusion_calls"] == 1 and out["dit_calls"] == 1
    assert compiled == [dict(backend="eager")] and out["compile"] == "eager" and out["compile_warmup_s"] is not None
