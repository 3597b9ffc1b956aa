"""save_video: out-of-range values clip, animations loop forever."""
import numpy as np
import pytest
import torch
from PIL import Image

from echovideo.video_io import save_video


def frames_out_of_range():
    # two 2x4 grey frames: columns -0.5, 0, 1, 1.5, then the same reversed
    row = torch.tensor([-0.5, 0.0, 1.0, 1.5]).reshape(1, 4, 1).expand(2, 4, 3)
    return torch.stack([row, row.flip(1)])


def test_values_outside_0_1_clip(tmp_path):
    path = str(tmp_path / "clip.webp")  # lossless: pixels come back exactly
    save_video(frames_out_of_range(), path)
    with Image.open(path) as im:
        assert im.n_frames == 2
        first = np.asarray(im.convert("RGB"))
        im.seek(1)
        second = np.asarray(im.convert("RGB"))
    # -0.5 -> 0 and 1.5 -> 255, not wrapped around by the uint8 conversion
    assert first.tolist() == [[[v] * 3 for v in (0, 0, 255, 255)]] * 2
    assert second.tolist() == [[[v] * 3 for v in (255, 255, 0, 0)]] * 2


@pytest.mark.parametrize("ext", [".gif", ".webp"])
def test_animation_loops_forever(tmp_path, ext):
    path = str(tmp_path / ("loop" + ext))
    save_video(torch.rand(3, 8, 8, 3, generator=torch.Generator().manual_seed(0)), path, fps=10)
    with Image.open(path) as im:
        assert im.n_frames == 3
        assert im.info.get("loop") == 0  # 0: forever (a GIF without it plays once)


@pytest.mark.parametrize("ext, fps", [(".gif", 16), (".gif", 24), (".gif", 30), (".webp", 16), (".webp", 8)])
def test_animation_plays_at_its_fps(tmp_path, ext, fps):
    """The frames' display times, read back, add up to frames / fps within one tick (GIF: 10 ms), and every
    frame's end lies within a tick of its time, so the clip neither races nor drifts."""
    n = 49
    path = str(tmp_path / ("timing" + ext))
    save_video(torch.rand(n, 8, 8, 3, generator=torch.Generator().manual_seed(1)), path, fps=fps)
    tick = 10 if ext == ".gif" else 1
    durations = []
    with Image.open(path) as im:
        assert im.n_frames == n
        for i in range(n):
            im.seek(i)
            im.load()  # WebP reads a frame's duration with its data
            durations.append(im.info["duration"])
    ends = np.cumsum(durations)
    exact = np.arange(1, n + 1) * 1000 / fps
    assert np.abs(ends - exact).max() <= tick / 2 + 1e-9, (durations, exact[-1])


def test_mp4_of_odd_size_is_refused_with_the_fix(tmp_path):
    pytest.importorskip("av")
    with pytest.raises(ValueError, match=r"^frames: got 9x8, an .mp4 needs an even width and height"):
        save_video(torch.rand(2, 8, 9, 3), str(tmp_path / "odd.mp4"))
    assert not (tmp_path / "odd.mp4").exists()
    save_video(torch.rand(2, 8, 10, 3), str(tmp_path / "even.mp4"))
    assert (tmp_path / "even.mp4").stat().st_size > 0


def read_mp4(path):
    import av
    with av.open(path) as c:
        s = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
        return frames, s.average_rate, (s.codec_context.width, s.codec_context.height)


def test_mp4_keeps_size_colours_frames_and_fps(tmp_path):
    """A 64x32 clip of 9 red frames at 8 fps reads back as 9 red 64x32 frames at 8 fps (not transposed,
    not BGR, not the default 16 fps)."""
    frames = torch.zeros(9, 32, 64, 3)
    frames[..., 0] = 0.9  # red
    frames[..., 2] = 0.1
    path = str(tmp_path / "red.mp4")
    save_video(frames, path, fps=8)
    got, rate, size = read_mp4(path)
    assert size == (64, 32) and len(got) == 9 and got[0].shape == (32, 64, 3)
    assert float(rate) == 8
    mean = got[4].reshape(-1, 3).mean(0)
    assert mean[0] > 200 and mean[2] < 60, mean


def test_mp4_of_odd_height_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"^frames: got 8x9, an .mp4 needs an even width and height"):
        save_video(torch.rand(2, 9, 8, 3), str(tmp_path / "odd.mp4"))



def test_mp4_is_tagged_as_the_bt601_limited_range_it_holds(tmp_path):
    """The colour matrix, primaries, transfer and range the RGB frames were converted with are in the stream, so a
    player does not guess (untagged HD is often taken for BT.709)."""
    import av

    path = str(tmp_path / "tags.mp4")
    save_video(torch.rand(3, 32, 64, 3), path)
    with av.open(path) as c:
        cc = c.streams.video[0].codec_context
        assert (cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range) == (6, 6, 6, 1)


@pytest.mark.parametrize("ext", [".mp4", ".gif"])
def test_an_interrupted_write_leaves_the_old_file_and_no_partial_one(tmp_path, monkeypatch, ext):
    """The video goes to a temporary file beside --out and is renamed into place once complete: Ctrl-C (or any
    error) while writing leaves an existing video unchanged and no partial file; a finished write replaces it
    with the mode a plain open would give."""
    import os

    from echovideo import video_io

    path = tmp_path / f"clip{ext}"
    frames = torch.rand(3, 16, 16, 3)
    save_video(frames, str(path))
    before = path.read_bytes()
    real_write = video_io._write

    def interrupted(video, partial, ext, fps):
        real_write(video[:1], partial, ext, fps)  # part of the file is on disk when the user presses Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(video_io, "_write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_video(torch.rand(9, 16, 16, 3), str(path))
    assert path.read_bytes() == before and os.listdir(tmp_path) == [path.name]
    monkeypatch.setattr(video_io, "_write", real_write)
    save_video(torch.rand(5, 16, 16, 3), str(path))
    assert path.read_bytes() != before and os.listdir(tmp_path) == [path.name]
    mask = os.umask(0)
    os.umask(mask)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~mask


def test_writing_through_a_link_keeps_the_link_an_existing_mode_and_takes_long_names(tmp_path):
    """The rename goes to a link's target (the link stays), keeps an existing file's mode, and the temporary name
    does not grow with the output's (a name near the file system's limit still works)."""
    import os

    real = tmp_path / "real"
    real.mkdir()
    target = real / "t.gif"
    save_video(torch.rand(2, 8, 8, 3), str(target))
    target.chmod(0o600)
    link = tmp_path / "link.gif"
    link.symlink_to(target)
    before = target.read_bytes()
    save_video(torch.rand(3, 8, 8, 3), str(link))
    assert link.is_symlink() and target.read_bytes() != before
    assert (target.stat().st_mode & 0o777) == 0o600
    assert sorted(os.listdir(real)) == ["t.gif"]
    long_name = tmp_path / ("a" * 250 + ".gif")  # 254 characters: within the usual 255
    save_video(torch.rand(2, 8, 8, 3), str(long_name))
    assert long_name.is_file()
