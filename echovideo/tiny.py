"""Tiny random-weight models of the real architectures, for demos, tests and benchmarks (no downloads)."""
from dataclasses import dataclass

import torch
from torch import nn

from .config import TransformerConfig
from .transformer import EchoVideoTransformer


@dataclass(frozen=True)
class Preset:
    layers: int
    heads: int
    head_dim: int
    latent_channels: int
    text_dim: int
    text_len: int
    frames: int
    height: int
    width: int
    steps: int
    guidance: float
    siglip_image_size: int = 64  # 16 SigLIP tokens (patch 16), as the golden file


PRESETS = {
    "shared": Preset(2, 2, 16, 4, 64, 16, 9, 64, 64, 4, 6.0),
    "large": Preset(4, 4, 32, 16, 128, 32, 25, 128, 192, 6, 6.0),
}


def dit_config(p: Preset) -> TransformerConfig:
    tokens = (p.siglip_image_size // 16) ** 2
    return TransformerConfig(num_attention_heads=p.heads, attention_head_dim=p.head_dim,
                             in_channels=2 * p.latent_channels, out_channels=p.latent_channels,
                             time_embed_dim=p.heads * p.head_dim, text_embed_dim=p.text_dim, num_layers=p.layers,
                             max_text_seq_length=p.text_len, face_seq_length=tokens,
                             sample_width=8, sample_height=8, sample_frames=p.frames)


def vae_config(p: Preset) -> dict:
    return dict(in_channels=3, out_channels=3, down_block_types=["CogVideoXDownBlock3D"] * 4,
                up_block_types=["CogVideoXUpBlock3D"] * 4, block_out_channels=[8, 8, 8, 8],
                latent_channels=p.latent_channels, layers_per_block=1, act_fn="silu", norm_eps=1e-6,
                norm_num_groups=2, temporal_compression_ratio=4, sample_height=480, sample_width=720,
                scaling_factor=1.15258426, use_quant_conv=False, use_post_quant_conv=False)


def siglip_config(p: Preset) -> dict:
    return dict(hidden_size=768, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_channels=3,
                image_size=p.siglip_image_size, patch_size=16, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh")


def randomize_(module: nn.Module, seed: int = 0, std: float = 0.02) -> nn.Module:
    """Deterministic random weights: normal(0, std) matrices, unit norms, small biases."""
    g = torch.Generator("cpu").manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1 and ("norm" in name or "layernorm" in name or "layer_norm" in name) and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def tiny_dit(p: Preset, seed: int = 0, dtype=torch.float32) -> EchoVideoTransformer:
    model = EchoVideoTransformer(dit_config(p), dtype=dtype)
    return randomize_(model, seed).eval().requires_grad_(False)


def tiny_vae(p: Preset, seed: int = 1):
    from .vae import build_vae

    return randomize_(build_vae(vae_config(p)), seed)


def tiny_siglip(p: Preset, seed: int = 2):
    from .siglip import build_siglip

    return randomize_(build_siglip(siglip_config(p)), seed)
