"""The standalone CLI generates a video from tiny models laid out like ComfyUI's models/ folder."""
import pytest

from echovideo import cli
from make_tiny_models import main as make_tiny_models


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_tiny_models([str(root / "models"), "--input-dir", str(root / "input")])
    return root


def tiny_args(root, out, *extra):
    m = root / "models"
    return ["--models-dir", str(m), "--image", str(root / "input" / "echovideo_example_photo.png"),
            "--prompt", "a person waves", "--dit", "echo_tiny.safetensors", "--vae", "vae_tiny.safetensors",
            "--siglip", "siglip_tiny.safetensors", "--t5", "t5_tiny.safetensors",
            "--tokenizer", str(m / "text_encoders" / "t5_tiny_tokenizer"), "--width", "64", "--height", "64",
            "--frames", "9", "--steps", "2", "--out", str(out), *extra]


def test_cli_writes_mp4(tiny_models, tmp_path):
    av = pytest.importorskip("av")
    out = tmp_path / "tiny.mp4"
    cli.main(tiny_args(tiny_models, out))
    with av.open(str(out)) as c:
        stream = c.streams.video[0]
        frames = list(c.decode(stream))
    assert len(frames) == 9 and (stream.width, stream.height) == (64, 64)


def test_cli_refuses_bad_size_and_missing_model(tiny_models, tmp_path):
    from echovideo.errors import EchoVideoInputError

    with pytest.raises(EchoVideoInputError, match="num_frames: got 10"):
        cli.main(tiny_args(tiny_models, tmp_path / "x.mp4", "--frames", "10"))
    with pytest.raises(SystemExit, match="diffusion_models model 'nope.safetensors' not found"):
        cli.main(tiny_args(tiny_models, tmp_path / "x.mp4", "--dit", "nope.safetensors"))
