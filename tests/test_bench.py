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
    assert abs(out["per_step_s"] - out["loop_s"] / 2) <= 1e-4 and out["threads"] == 1  # both rounded to 1e-4


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
    ("--threads", "0", "at least 1"), ("--frames", "0", "8k+1"), ("--frames", "10", "8k+1"),
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
