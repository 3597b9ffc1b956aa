"""Sampling previews: one latent frame to RGB without the VAE.

CogVideoX latents (16 channels, at the DiT's scale) go through a fixed linear map to RGB in [-1, 1], as
ComfyUI's Latent2RGB previews do for the video models it knows. The factors are the ones published for
CogVideoX in kijai's ComfyUI-CogVideoXWrapper (latent_preview.py). Latents with another channel count (the
tiny test models) are shown as their first three channels, each stretched to 0..255.
"""
import torch

COGVIDEOX_LATENT_RGB_FACTORS = (
    (0.11945946736445662, 0.09919175788574555, -0.004832707433877734),
    (-0.0011977028264356232, 0.05496505130267682, 0.021321622433638193),
    (-0.014088548986590666, -0.008701477861945644, -0.020991313281459367),
    (0.03063921972519621, 0.12186477097625073, 0.0139593690235148),
    (0.0927403067854673, 0.030293187650929136, 0.05083134241694003),
    (0.0379112441305742, 0.04935199882777209, 0.058562766246777774),
    (0.017749911959153715, 0.008839453404921545, 0.036005638019226294),
    (0.10610119248526109, 0.02339855688237826, 0.057154257614084596),
    (0.1273639464837117, -0.010959856130713416, 0.043268631260428896),
    (-0.01873510946881321, 0.08220930648486932, 0.10613256772247093),
    (0.008429116376722327, 0.07623856561000408, 0.09295712117576727),
    (0.12938137079617007, 0.12360403483892413, 0.04478930933220116),
    (0.04565908794779364, 0.041064156741596365, -0.017695041535528512),
    (0.00019003240570281826, -0.013965147883381978, 0.05329669529635849),
    (0.08082391586738358, 0.11548306825496074, -0.021464170006615893),
    (-0.01517932393230994, -0.0057985555313003236, 0.07216646476618871),
)
_FACTORS = torch.tensor(COGVIDEOX_LATENT_RGB_FACTORS)


def preview_frame(latents: torch.Tensor) -> torch.Tensor:
    """The frame a preview shows, [C, h, w]: the middle latent frame of [B, F, C, h, w] (frame 0 is the face
    frame); [B, C, h, w] and [C, h, w] give their (first) frame."""
    x = latents.detach()
    if x.dim() == 5:
        return x[0, x.shape[1] // 2]
    return x[0] if x.dim() == 4 else x


def latent_to_rgb(latents: torch.Tensor) -> torch.Tensor:
    """uint8 RGB [h, w, 3] on the CPU for the preview frame of `latents`."""
    x = preview_frame(latents).float().cpu()
    if x.shape[0] == len(COGVIDEOX_LATENT_RGB_FACTORS):
        rgb = torch.einsum("chw,cr->hwr", x, _FACTORS)
        return ((rgb + 1.0) / 2.0).clamp(0, 1).mul(255).round().to(torch.uint8)
    x = x[:3] if x.shape[0] >= 3 else x[:1].expand(3, -1, -1)
    lo, hi = x.amin(dim=(1, 2), keepdim=True), x.amax(dim=(1, 2), keepdim=True)
    return ((x - lo) / (hi - lo).clamp_min(1e-6)).mul(255).to(torch.uint8).permute(1, 2, 0)
