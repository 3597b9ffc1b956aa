"""echovideo.preview: which frame a sampling preview shows and how a latent becomes RGB."""
import pytest
import torch

from echovideo.preview import COGVIDEOX_LATENT_RGB_FACTORS, latent_to_rgb, preview_frame


def test_cogvideox_latents_go_through_the_rgb_factors():
    torch.manual_seed(0)
    frame = torch.randn(16, 3, 5) * 3
    factors = torch.tensor(COGVIDEOX_LATENT_RGB_FACTORS, dtype=torch.float64)
    want = ((torch.einsum("chw,cr->hwr", frame.double(), factors) + 1) / 2).clamp(0, 1) * 255
    got = latent_to_rgb(frame)
    assert got.dtype == torch.uint8 and got.shape == (3, 5, 3)
    assert (got.double() - want).abs().max() <= 0.5 + 1e-6  # rounded to the nearest level
    assert len(COGVIDEOX_LATENT_RGB_FACTORS) == 16 and all(len(row) == 3 for row in COGVIDEOX_LATENT_RGB_FACTORS)


def test_rgb_factors_are_the_published_ones():
    """Rows as published in kijai's ComfyUI-CogVideoXWrapper (latent_preview.py), copied by hand as numbers."""
    published = {0: (0.11945946736445662, 0.09919175788574555, -0.004832707433877734),
                 8: (0.1273639464837117, -0.010959856130713416, 0.043268631260428896),
                 15: (-0.01517932393230994, -0.0057985555313003236, 0.07216646476618871)}
    for row, values in published.items():
        assert COGVIDEOX_LATENT_RGB_FACTORS[row] == values, row
    column_sums = [round(sum(col), 6) for col in zip(*COGVIDEOX_LATENT_RGB_FACTORS)]
    assert column_sums == [0.747248, 0.787079, 0.585463]  # of the published table


def test_saturated_latents_clip_to_black_and_white():
    frame = torch.zeros(16, 1, 2)
    frame[:, 0, 0] = 1000.0
    frame[:, 0, 1] = -1000.0
    colours = latent_to_rgb(frame)[0].tolist()
    signs = [sum(col) > 0 for col in zip(*COGVIDEOX_LATENT_RGB_FACTORS)]  # every channel sums positive
    assert all(signs)
    assert colours == [[255, 255, 255], [0, 0, 0]]


@pytest.mark.parametrize("shape, index", [((1, 5, 16, 2, 2), (0, 2)), ((1, 4, 16, 2, 2), (0, 2)),
                                          ((2, 16, 2, 2), (0,)), ((16, 2, 2), ())])
def test_preview_frame_is_the_middle_latent_frame(shape, index):
    lat = torch.randn(shape)
    assert torch.equal(preview_frame(lat), lat[index] if index else lat)


def test_other_channel_counts_stretch_their_first_three_channels():
    """Tiny test models' latents (not CogVideoX's 16 channels): channels 0-2, each min-max to 0..255."""
    frame = torch.zeros(4, 2, 3)
    frame[0] = torch.arange(6.0).reshape(2, 3)
    frame[1] = -torch.arange(6.0).reshape(2, 3)
    frame[3] = 100.0  # not shown
    rgb = latent_to_rgb(frame)
    assert rgb[..., 0].flatten().tolist() == [0, 51, 102, 153, 204, 255]
    assert rgb[..., 1].flatten().tolist() == [255, 204, 153, 102, 51, 0]
    assert rgb[..., 2].flatten().tolist() == [0] * 6  # a flat channel
    one = latent_to_rgb(torch.arange(4.0).reshape(1, 2, 2))  # one channel: grey
    assert torch.equal(one[..., 0], one[..., 1]) and torch.equal(one[..., 0], one[..., 2])
