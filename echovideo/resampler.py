"""Identity resampler: a perceiver that turns the repeated ArcFace embedding into identity tokens.

Released sizes: width 1024, 4 layers, 12 heads x 64, 16 queries, 512-d input, 768-d output.
"""
import math

import torch
from torch import nn


def _split_heads(x, heads):
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


class PerceiverAttention(nn.Module):
    def __init__(self, dim, dim_head, heads, operations=nn, dtype=None, device=None):
        super().__init__()
        self.dim_head, self.heads = dim_head, heads
        inner = dim_head * heads
        self.norm1 = operations.LayerNorm(dim, dtype=dtype, device=device)
        self.norm2 = operations.LayerNorm(dim, dtype=dtype, device=device)
        self.to_q = operations.Linear(dim, inner, bias=False, dtype=dtype, device=device)
        self.to_kv = operations.Linear(dim, inner * 2, bias=False, dtype=dtype, device=device)
        self.to_out = operations.Linear(inner, dim, bias=False, dtype=dtype, device=device)

    def forward(self, features, latents):
        features, latents = self.norm1(features), self.norm2(latents)
        b, n, _ = latents.shape
        q = _split_heads(self.to_q(latents), self.heads)
        k, v = self.to_kv(torch.cat((features, latents), dim=-2)).chunk(2, dim=-1)
        k, v = _split_heads(k, self.heads), _split_heads(v, self.heads)
        scale = 1 / math.sqrt(math.sqrt(self.dim_head))
        weight = (q * scale) @ (k * scale).transpose(-2, -1)
        weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
        return self.to_out((weight @ v).permute(0, 2, 1, 3).reshape(b, n, -1))


def _feed_forward(dim, mult, operations, dtype, device):
    return nn.Sequential(
        operations.LayerNorm(dim, dtype=dtype, device=device),
        operations.Linear(dim, dim * mult, bias=False, dtype=dtype, device=device),
        nn.GELU(),
        operations.Linear(dim * mult, dim, bias=False, dtype=dtype, device=device),
    )


class IdentityResampler(nn.Module):
    """[B, repeats, embedding_dim] ArcFace tokens -> [B, num_queries, output_dim] identity tokens."""

    def __init__(self, dim=1024, depth=4, dim_head=64, heads=12, num_queries=16, embedding_dim=512,
                 output_dim=768, ff_mult=4, operations=nn, dtype=None, device=None):
        super().__init__()
        self.num_queries = num_queries
        self.latents = nn.Parameter(torch.empty(1, num_queries, dim, dtype=dtype, device=device))
        self.proj_in = operations.Linear(embedding_dim, dim, dtype=dtype, device=device)
        self.proj_out = operations.Linear(dim, output_dim, dtype=dtype, device=device)
        self.norm_out = operations.LayerNorm(output_dim, dtype=dtype, device=device)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads, operations, dtype, device),
                           _feed_forward(dim, ff_mult, operations, dtype, device)])
            for _ in range(depth))

    def forward(self, id_tokens):
        features = self.proj_in(id_tokens)
        latents = self.latents.to(device=features.device, dtype=features.dtype).repeat(id_tokens.size(0), 1, 1)
        for attn, ff in self.layers:
            latents = attn(features, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))
