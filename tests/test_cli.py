"""The standalone CLI generates a video from tiny models laid out like ComfyUI's models/ folder."""
import pytest

from echovideo import cli
from make_tiny_models import main as make_tiny_models


@pytest.fixture(scope="module")
def tiny_models(module_tmp_path):
    root = module_tmp_path
    make_tiny_models([str(root / "models"), "--input-dir", str(root / "input")])
    return root


def tiny_args(root, out, *extra):
    m = root / "models"
    return ["--models-dir", str(m), "--image", str(root / "input" / "echovideo_example_photo.png"),
            "--prompt", "a person waves", "--dit", "echo_tiny.safetensors", "--vae", "vae_tiny.safetensors",
            "--siglip", "siglip_tiny.safetensors", "--t5", "t5_tiny.safetensors",
            "--tokenizer", str(m / "text_encoders" / "t5_tiny_tokenizer"), "--width", "64", "--height", "64",
            "--frames", "9", "--steps", "2", "--out", str(out), *extra]


def test_cli_writes_mp4(tiny_models, tmp_path, capsys):
    import av
    out = tmp_path / "tiny.mp4"
    cli.main(tiny_args(tiny_models, out, "--fps", "12"))
    # not a terminal: one progress line per step, readable in a log file
    assert capsys.readouterr().err.split("\n")[-3:] == ["step 1/2", "step 2/2", ""]
    with av.open(str(out)) as c:
        stream = c.streams.video[0]
        frames = list(c.decode(stream))
        rate = stream.average_rate
    assert len(frames) == 9 and (stream.width, stream.height) == (64, 64) and rate == 12


def test_options_reach_the_generation(tiny_models, tmp_path, monkeypatch):
    """What the options turn into: both prompts encoded, guidance and dynamic CFG, the CPU default dtype (fp32),
    and a lossless .webp written at the asked frame rate with rounded pixel values."""
    import numpy as np
    import torch
    from PIL import Image

    from echovideo import pipeline, text

    prompts, seen = [], {}
    encode = text.encode_prompt

    def recording_encode(encoder, tokenizer, prompt, *a, **kw):
        prompts.append(prompt)
        return encode(encoder, tokenizer, prompt, *a, **kw)

    def recording_generate(dit, vae, siglip_model, text_pos, text_neg, *a, **kw):
        seen.update(kw, dit_dtype=dit.compute_dtype, negative=text_neg)
        return torch.arange(9.0).div(8).reshape(9, 1, 1, 1).expand(9, 64, 64, 3)  # frame i: i / 8

    monkeypatch.setattr(text, "encode_prompt", recording_encode)
    monkeypatch.setattr(pipeline, "generate", recording_generate)
    out = tmp_path / "tiny.webp"
    cli.main(tiny_args(tiny_models, out, "--negative-prompt", "blurry", "--cfg", "1", "--no-dynamic-cfg",
                       "--fps", "8"))
    assert prompts == ["a person waves", "blurry"]
    assert seen["guidance_scale"] == 1.0 and seen["dynamic_cfg"] is False and seen["dit_dtype"] == torch.float32
    with Image.open(out) as webp:
        assert webp.n_frames == 9
        webp.seek(1)
        webp.load()
        assert webp.info["duration"] == 125  # 1000 ms / 8 fps
        assert np.asarray(webp.convert("RGB"))[0, 0].tolist() == [32] * 3  # 255 / 8 = 31.875 rounds to 32


def test_a_model_passed_as_another_option_names_the_option_and_the_right_one(tiny_models, tmp_path):
    """The VAE given as --dit, the SigLIP as --t5: one line naming the option, with the fix in options (the
    library's messages name the ComfyUI loaders)."""
    models = tiny_models / "models"
    vae = str(next((models / "vae").glob("*.safetensors")))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(tiny_args(tiny_models, tmp_path / "x.mp4", "--dit", vae))
    message = exit_info.value.code
    assert message.startswith(f"error: --dit: {vae}: the config is a VAE's"), message
    assert "pass it as --vae, and pass the EchoVideo transformer as --dit" in message
    assert "Loader" not in message and "Load CLIP" not in message
    siglip = str(next((models / "clip_vision").glob("*.safetensors")))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(tiny_args(tiny_models, tmp_path / "x.mp4", "--t5", siglip))
    message = exit_info.value.code
    assert message.startswith("error: --t5: ") and "--t5" in message[len("error: --t5: "):], message
    assert "Loader" not in message and "Load CLIP" not in message and "Text Encode" not in message


def test_cli_refuses_bad_size_and_missing_model(tiny_models, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(tiny_args(tiny_models, tmp_path / "x.mp4", "--frames", "10"))
    assert exit_info.value.code == 2 and "--frames: got 10, needs 8k+1" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--dit: diffusion_models model 'nope.safetensors' not found"):
        cli.main(tiny_args(tiny_models, tmp_path / "x.mp4", "--dit", "nope.safetensors"))
    # a face index past the faces found ends in one line, not a traceback
    with pytest.raises(SystemExit, match=r"^error: --face-index 5 is out of range: 2 faces were found[^_]*$") as exit_info:
        cli.main(tiny_args(tiny_models, tmp_path / "x.mp4", "--face-index", "5"))
    assert exit_info.value.code != 0


def checked_args(tmp_path, *extra):
    """Valid options with an empty --models-dir: past the checks, the run stops at the first model path."""
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "photo.png").write_bytes(b"")
    return ["--models-dir", str(tmp_path / "models"), "--image", str(tmp_path / "photo.png"), "--prompt", "x",
            "--out", str(tmp_path / "x.webp"), "--device", "cpu", *extra]


def test_valid_options_reach_the_model_paths(tmp_path):
    """With no models yet, one error names every missing model with its option, and how to point at it."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(checked_args(tmp_path))
    msg = str(exit_info.value)
    for option, folder in (("--t5", "text_encoders"), ("--siglip", "clip_vision"), ("--vae", "vae"),
                           ("--dit", "diffusion_models")):
        assert f"{option}: {folder} model " in msg, msg
    for name in ("scrfd_10g_bnkps.onnx", "glintr100.onnx", "detection_Resnet50_Final.pth", "parsing_bisenet.pth"):
        assert f"face model file '{name}' not found" in msg, msg  # the face models in the same one error
    assert "insightface/models/antelopev2/ and facexlib/ folders only" in msg
    assert "or an absolute path" in msg


def test_unreadable_model_or_tokenizer_is_one_line_naming_the_option(tiny_models, tmp_path):
    """A model file cut short or a folder without a tokenizer: one line naming the option, no traceback."""
    m = tiny_models / "models"
    for option, folder, name in (("--dit", "diffusion_models", "echo_tiny.safetensors"),
                                 ("--vae", "vae", "vae_tiny.safetensors"),
                                 ("--siglip", "clip_vision", "siglip_tiny.safetensors"),
                                 ("--t5", "text_encoders", "t5_tiny.safetensors")):
        data = (m / folder / name).read_bytes()
        cut = tmp_path / f"cut_{name}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(SystemExit, match=rf"^error: {option}: .*cut_{name} could not be read "
                                             r"\(SafetensorError: .*Download it again$"):
            cli.main(tiny_args(tiny_models, tmp_path / "x.webp", option, str(cut)))
    empty = tmp_path / "no_tokenizer"
    empty.mkdir()
    with pytest.raises(SystemExit, match=r"^error: --tokenizer: .*no_tokenizer could not be read .*is not a "
                                         r"tokenizer folder.*pass --tokenizer FOLDER"):
        cli.main(tiny_args(tiny_models, tmp_path / "x.webp", "--tokenizer", str(empty)))


@pytest.mark.parametrize("out", ["already_a_folder.webp", "notes.txt/x.webp"])
def test_out_that_cannot_be_written_fails_before_loading(tmp_path, capsys, out):
    (tmp_path / "already_a_folder.webp").mkdir()
    (tmp_path / "notes.txt").write_text("a file, so no folder can be made there")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(checked_args(tmp_path, "--out", str(tmp_path / out)))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--out: got" in err and "(not a folder)" in err


def test_unreadable_photo_is_one_line_naming_the_image(tiny_models, tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    with pytest.raises(SystemExit, match=r"^error: --image: '.*notes.png' could not be read as an image"):
        cli.main(tiny_args(tiny_models, tmp_path / "x.mp4", "--image", str(not_an_image)))


@pytest.mark.parametrize("option, value, says", [
    ("--fps", "0", "at least 1"), ("--out", "x.avi", ".mp4, .webp, .gif"),
    ("--cfg", "-3", "1.0 turns guidance off"), ("--cfg", "0.5", "at least 1.0"), ("--cfg", "nan", "at least 1.0"),
    ("--cfg", "inf", "a finite number"), ("--cfg", "31", "at most 30.0"), ("--fps", "241", "at most 240"),
    ("--device", "meta", "a device this torch can use here: cpu"), ("--device", "mps", "can use here: cpu"),
    ("--step-cache", "-1", "from 0 to 1"), ("--step-cache", "1.5", "from 0 to 1"), ("--steps", "0", "at least 1"),
    ("--steps", "1001", "at most 1000"),
    ("--device", "cdua", "torch device"), ("--device", "cuda:99", "a device this torch can use here: cpu"),
    ("--frames", "10", "8k+1"), ("--frames", "0", "8k+1"), ("--frames", "13", "so 13 would come out as 16 frames"),
    ("--width", "100", "multiple of 16"),
    ("--height", "0", "multiple of 16"), ("--face-index", "-1", "largest face"), ("--seed", str(2 ** 64), "0 to 2**64 - 1"),
    ("--seed", "-1", "0 to 2**64 - 1"), ("--width", "2064", "at most 2048"), ("--height", "4096", "at most 2048"),
    ("--frames", "265", "at most 257"), ("--device", "hpu", "a device this torch can use here (ModuleNotFoundError: "),
    ("--image", "missing.png", "existing image"), ("--tokenizer", "missing", "existing tokenizer"),
    ("--models-dir", "missing", "existing folder"),
])
def test_bad_option_fails_before_loading(tmp_path, capsys, option, value, says):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(checked_args(tmp_path, option, value))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "usage:" in err
    assert f"{option}: got" in err and says in err


def test_mp4_without_pyav_fails_before_loading(tmp_path, capsys, monkeypatch):
    find_spec = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name, *a: None if name == "av" else find_spec(name, *a))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(checked_args(tmp_path, "--out", str(tmp_path / "x.mp4")))
    assert exit_info.value.code == 2 and "--out: got" in capsys.readouterr().err


def record_run(monkeypatch, root, out, *extra):
    """Runs the CLI on the tiny models with pipeline.generate replaced; returns the face/generate call order
    and what generate received (positional face_crop and id_embedding, the keywords, the models)."""
    import weakref

    import torch

    from echovideo import face, pipeline

    events, seen = [], {}
    load, extract, release = face.load_face_models, face.extract_identity, face.release_face_models

    def recording_load(paths, device="cpu"):
        events.append(("load_face_models", device))
        models = load(paths, device=device)
        seen["face_models"] = weakref.ref(models)
        return models

    def recording_extract(*a, **kw):
        events.append("extract_identity")
        return extract(*a, **kw)

    def recording_release(*a, **kw):
        events.append("release_face_models")
        release(*a, **kw)
        seen["face_models_alive_after_release"] = seen["face_models"]() is not None

    def recording_generate(dit, vae, siglip_model, text_pos, text_neg, face_crop, id_embedding, *a, **kw):
        events.append("generate")
        seen.update(kw, dit=dit, vae=vae, face_crop=face_crop, id_embedding=id_embedding)
        return torch.zeros(9, 64, 64, 3)

    monkeypatch.setattr(face, "load_face_models", recording_load)
    monkeypatch.setattr(face, "extract_identity", recording_extract)
    monkeypatch.setattr(face, "release_face_models", recording_release)
    monkeypatch.setattr(pipeline, "generate", recording_generate)
    cli.main(tiny_args(root, out, *extra))
    return events, seen


def test_face_options_reach_the_generation(tiny_models, tmp_path, monkeypatch):
    """--face-index picks another face's embedding, --whole-image sends the whole photo as the reference frame."""
    import numpy as np

    from echovideo import face

    photo = face.load_image_file(str(tiny_models / "input" / "echovideo_example_photo.png"))
    _, default = record_run(monkeypatch, tiny_models, tmp_path / "a.webp")
    _, chosen = record_run(monkeypatch, tiny_models, tmp_path / "b.webp", "--face-index", "1", "--whole-image")
    # default: face 0, its parsed crop as the reference frame, no step cache, seed 42
    assert np.array_equal(default["reference_image"], default["face_crop"])
    assert not np.array_equal(default["reference_image"], photo)
    assert default["dit_caller"] is None and default["seed"] == 42
    # face 1 has another identity; the reference frame is the photo itself
    assert not np.allclose(chosen["id_embedding"], default["id_embedding"])
    assert np.array_equal(chosen["reference_image"], photo)


def test_run_options_reach_the_generation(tiny_models, tmp_path, monkeypatch):
    """--seed and --step-cache reach generate; the face models load on --device and are released before the
    DiT runs; bf16 on CPU keeps the VAE in fp32 (the DiT computes in bf16)."""
    import torch

    from echovideo.step_cache import StepCache

    events, seen = record_run(monkeypatch, tiny_models, tmp_path / "c.webp", "--seed", "7", "--step-cache", "0.2",
                              "--dtype", "bf16", "--device", "cpu:0")  # cpu:0, not the default "cpu"
    assert events == [("load_face_models", "cpu:0"), "extract_identity", "release_face_models", "generate"]
    assert seen["face_models_alive_after_release"] is False  # no reference left to them while the DiT runs
    assert seen["seed"] == 7
    caller = seen["dit_caller"]
    assert isinstance(caller, StepCache) and caller.threshold == 0.2 and caller.model is seen["dit"]
    assert seen["dit"].compute_dtype == torch.bfloat16
    assert {p.dtype for p in seen["vae"].parameters()} == {torch.float32}


def test_fp16_warns_of_overflow(tiny_models, tmp_path, monkeypatch, capsys):
    record_run(monkeypatch, tiny_models, tmp_path / "d.webp", "--dtype", "fp16")
    assert "warning: --dtype fp16: CogVideoX-5B can overflow in fp16" in capsys.readouterr().err


def test_gif_fps_is_at_most_50(tmp_path, capsys):
    """GIF frame times are 10 ms steps and players slow down shorter ones: above 50 fps only .mp4/.webp."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(checked_args(tmp_path, "--out", str(tmp_path / "x.gif"), "--fps", "60"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--fps: got 60, needs at most 50 for a .gif" in err
    assert cli.parse_args(checked_args(tmp_path, "--out", str(tmp_path / "x.webp"), "--fps", "60")).fps == 60
    assert cli.parse_args(checked_args(tmp_path, "--out", str(tmp_path / "x.gif"), "--fps", "50")).fps == 50


def test_paths_after_an_equals_sign_have_their_tilde_expanded(tmp_path, monkeypatch):
    """The shell leaves "~" in --out=~/x.webp as it is: the CLI expands it (not a folder named "~")."""
    monkeypatch.setenv("HOME", str(tmp_path))
    args = cli.parse_args(checked_args(tmp_path)[:-4] + ["--out=~/videos/x.webp", "--image=~/photo.png",
                                                         "--models-dir=~/models", "--dit=~/dit.safetensors"])
    assert args.out == str(tmp_path / "videos" / "x.webp") and args.image == str(tmp_path / "photo.png")
    assert args.models_dir == str(tmp_path / "models") and args.dit == str(tmp_path / "dit.safetensors")


def test_out_the_file_system_refuses_fails_before_loading(tiny_models, tmp_path, monkeypatch):
    """A folder the permission check passes but the file system refuses (read-only, /proc, as root): the run
    stops before the photo or any model is read, not after the generation."""
    import builtins
    import errno

    from echovideo import face

    out = tmp_path / "ro" / "x.webp"
    real_open = builtins.open

    def refusing_open(path, *a, **kw):
        if str(path) == str(out):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr(builtins, "open", refusing_open)
    monkeypatch.setattr(face, "load_image_file", lambda *a: pytest.fail("the photo was read before --out was"))
    with pytest.raises(SystemExit, match=r"^error: --out: .*x.webp cannot be written \(OSError: .*Read-only"):
        cli.main(tiny_args(tiny_models, out))
    assert not out.parent.exists()  # the folder the probe made is gone again
    monkeypatch.setattr(builtins, "open", real_open)
    kept = tmp_path / "kept.webp"
    kept.write_bytes(b"an earlier video")
    cli.check_out_writable(str(kept))
    cli.check_out_writable(str(tmp_path / "new" / "videos" / "new.webp"))
    assert kept.read_bytes() == b"an earlier video" and not (tmp_path / "new").exists()
    link = tmp_path / "link.webp"
    link.symlink_to(tmp_path / "target" / "x.webp")  # dangling: opening it would create the target
    cli.check_out_writable(str(link))
    assert link.is_symlink() and not (tmp_path / "target").exists()


def test_frames_with_nan_are_not_written(tiny_models, tmp_path, monkeypatch):
    """An overflow (fp16, extreme guidance) gives NaN frames: an error, not a black video and exit 0."""
    import torch

    from echovideo import pipeline

    monkeypatch.setattr(pipeline, "generate", lambda *a, **kw: torch.full((9, 64, 64, 3), float("nan")))
    out = tmp_path / "nan.webp"
    with pytest.raises(SystemExit, match=r"^error: the generated frames hold NaN .*--dtype bf16"):
        cli.main(tiny_args(tiny_models, out))
    assert not out.exists()


def test_device_types_the_cli_does_not_know_pass_where_torch_can_make_a_tensor(tmp_path, monkeypatch):
    """cpu, cuda, mps, xpu and meta are checked; other torch devices (DirectML's privateuseone, npu, ...) pass
    where this torch can make a tensor there (a backend registered), and are refused where it cannot (hpu, or
    privateuseone with no backend, raised ModuleNotFoundError / RuntimeError deep in the run)."""
    import torch

    assert cli.device_problem(torch.device("hpu")).startswith("ModuleNotFoundError")
    assert cli.device_problem(torch.device("privateuseone:0")) is not None
    assert cli.device_problem(torch.device("cpu")) is None
    with pytest.raises(SystemExit):
        cli.parse_args(checked_args(tmp_path, "--device", "privateuseone:0"))
    monkeypatch.setattr(cli, "device_problem", lambda device: None)  # as with torch-directml installed
    assert cli.parse_args(checked_args(tmp_path, "--device", "privateuseone:0")).device == "privateuseone:0"
    assert cli.device_available(torch.device("cpu")) and not cli.device_available(torch.device("meta"))
    assert cli.devices_here().startswith("cpu")


def test_out_probe_from_a_deleted_working_folder_is_one_line(tmp_path, monkeypatch):
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with pytest.raises(SystemExit, match=r"^error: --out: out.webp cannot be written \(FileNotFoundError"):
        cli.check_out_writable("out.webp")


def test_ctrl_c_and_a_missing_package_end_in_one_line(tmp_path, capsys, monkeypatch):
    """Ctrl-C during the run: one line and exit status 130, no traceback; a package that is not installed: one
    error line with the install command for this checkout (not ComfyUI's custom_nodes path)."""
    from echovideo.errors import MissingPackageError

    def press_ctrl_c(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "generate_video", press_ctrl_c)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(checked_args(tmp_path))
    assert exit_info.value.code == 130
    assert capsys.readouterr().err.strip() == "interrupted: no video written"

    def no_onnxruntime(args):
        raise MissingPackageError(["onnxruntime"], "the face pipeline")

    monkeypatch.setattr(cli, "generate_video", no_onnxruntime)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(checked_args(tmp_path))
    assert exit_info.value.code == ("error: the face pipeline needs the Python package onnxruntime, which is not "
                                    "installed; install the requirements: .venv/bin/python -m pip install -r "
                                    "requirements.txt (or bash scripts/setup_env.sh)")


def test_missing_packages_are_named_before_any_model_loads(tmp_path, monkeypatch):
    """Every package the generation needs is looked for when the options are checked, so a failed install is
    reported at once, not after the face models and the T5 have loaded."""
    import sys

    monkeypatch.setitem(sys.modules, "diffusers", None)
    monkeypatch.setitem(sys.modules, "insightface", None)
    monkeypatch.setattr(cli, "generate_video", lambda args: pytest.fail("the run started"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(checked_args(tmp_path))
    assert exit_info.value.code == ("error: the generation needs the Python packages insightface, diffusers, which "
                                    "are not installed; install the requirements: .venv/bin/python -m pip install "
                                    "-r requirements.txt (or bash scripts/setup_env.sh)")
