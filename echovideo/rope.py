"""3D rotary position embedding, as the published pipeline builds it under diffusers 0.31.

The crop of the 480x720 base grid is sampled with `linspace(start, stop, n, endpoint=False)`;
later diffusers releases use a different grid at 4 of the 5 official resolutions, so this module
owns the computation instead of calling the installed diffusers.
"""
from typing import Optional, Tuple

import numpy as np
import torch

BASE_HEIGHT, BASE_WIDTH = 480, 720


def resize_crop_region_for_grid(grid: Tuple[int, int], base_width: int, base_height: int):
    """Centre crop region of the base grid that keeps the grid's aspect ratio."""
    h, w = grid
    if h / w > base_height / base_width:
        resize_h = base_height
        resize_w = int(round(base_height / h * w))
    else:
        resize_w = base_width
        resize_h = int(round(base_width / w * h))
    top = int(round((base_height - resize_h) / 2.0))
    left = int(round((base_width - resize_w) / 2.0))
    return (top, left), (top + resize_h, left + resize_w)


def _axis_cos_sin(dim: int, positions: np.ndarray, theta: float = 10000.0):
    pos = torch.from_numpy(positions)
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32)[: dim // 2] / dim))
    angles = torch.outer(pos, freqs)
    return angles.cos().repeat_interleave(2, dim=1).float(), angles.sin().repeat_interleave(2, dim=1).float()


def rotary_embedding_3d(head_dim: int, latent_frames: int, grid_height: int, grid_width: int,
                        base_grid_height: int, base_grid_width: int):
    """cos, sin of shape [latent_frames * grid_height * grid_width, head_dim]."""
    (top, left), (bottom, right) = resize_crop_region_for_grid(
        (grid_height, grid_width), base_grid_width, base_grid_height)
    grid_h = np.linspace(top, bottom, grid_height, endpoint=False, dtype=np.float32)
    grid_w = np.linspace(left, right, grid_width, endpoint=False, dtype=np.float32)
    grid_t = np.linspace(0, latent_frames, latent_frames, endpoint=False, dtype=np.float32)
    dim_t, dim_hw = head_dim // 4, head_dim // 8 * 3
    axes = [_axis_cos_sin(dim_t, grid_t), _axis_cos_sin(dim_hw, grid_h), _axis_cos_sin(dim_hw, grid_w)]

    def combine(t, h, w):
        shape = (latent_frames, grid_height, grid_width)
        t = t[:, None, None, :].expand(*shape, -1)
        h = h[None, :, None, :].expand(*shape, -1)
        w = w[None, None, :, :].expand(*shape, -1)
        return torch.cat([t, h, w], dim=-1).reshape(latent_frames * grid_height * grid_width, -1)

    cos = combine(axes[0][0], axes[1][0], axes[2][0])
    sin = combine(axes[0][1], axes[1][1], axes[2][1])
    return cos, sin


def rotary_embedding_for_video(head_dim: int, patch_size: int, height: int, width: int, num_frames: int,
                               spatial_compression: int = 8, temporal_compression: int = 4,
                               device=None):
    """The RoPE the published pipeline builds for a video of height x width x num_frames pixels."""
    step = spatial_compression * patch_size
    latent_frames = (num_frames - 1) // temporal_compression + 1
    cos, sin = rotary_embedding_3d(head_dim, latent_frames, height // step, width // step,
                                   BASE_HEIGHT // step, BASE_WIDTH // step)
    return cos.to(device), sin.to(device)


def pair_rotation(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """cos + i sin of each pair, [S, 1, D/2] complex64: build once per DiT call and pass to rotate_pairs_."""
    return torch.complex(cos[:, None, 0::2].float(), sin[:, None, 0::2].float())


def rotate_pairs_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  rotation: Optional[torch.Tensor] = None) -> None:
    """Rotates interleaved pairs of x [B, S, H, D] (a view, changed in place) by (cos, sin) [S, D]:
    each pair (even, odd) times the complex number cos + i sin (`rotation`, if given), computed in float32."""
    if torch.compiler.is_compiling():  # inductor generates no complex kernels
        rotate_pairs_real_(x, cos, sin)
        return
    if rotation is None:
        rotation = pair_rotation(cos, sin)
    if x.dtype == torch.float32:
        torch.view_as_complex(x.unflatten(-1, (-1, 2))).mul_(rotation)
    else:
        x.copy_(torch.view_as_real(torch.view_as_complex(x.float().unflatten(-1, (-1, 2))) * rotation).flatten(-2))


def rotate_pairs_real_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """rotate_pairs_ in real arithmetic: (even, odd) -> (even cos - odd sin, even sin + odd cos), float32."""
    c, s = cos[:, None, 0::2].float(), sin[:, None, 0::2].float()
    pairs = x.float().unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    x.copy_(torch.stack([even * c - odd * s, even * s + odd * c], dim=-1).flatten(-2))
