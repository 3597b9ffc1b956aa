"""The EchoVideo DiT: CogVideoX-5B (joint text+video attention, adaptive layer norms, 3D RoPE)
with the IITF identity modules. State-dict keys equal the released checkpoint's."""
import math
from typing import Optional, Tuple

import torch
from torch import nn

from .attention import get_attention
from .config import TransformerConfig
from .errors import check
from .iitf import IITF, fuse_identity
from .ops import fused_linear_gelu_tanh, linear
from .rope import pair_rotation, rotate_pairs_


def timestep_embedding(timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool, shift: float,
                       max_period: float = 10000.0) -> torch.Tensor:
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - shift))
    angles = timesteps[:, None].float() * freqs[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


class TimestepMLP(nn.Module):
    def __init__(self, in_dim, out_dim, operations, dtype, device):
        super().__init__()
        self.linear_1 = operations.Linear(in_dim, out_dim, dtype=dtype, device=device)
        self.linear_2 = operations.Linear(out_dim, out_dim, dtype=dtype, device=device)

    def forward(self, x):
        return self.linear_2(nn.functional.silu(self.linear_1(x)))


class PatchEmbed(nn.Module):
    def __init__(self, config: TransformerConfig, operations, dtype, device):
        super().__init__()
        p = config.patch_size
        self.proj = operations.Conv2d(config.in_channels, config.inner_dim, kernel_size=p, stride=p,
                                      bias=config.patch_bias, dtype=dtype, device=device)
        self.text_proj = operations.Linear(config.text_embed_dim, config.inner_dim, dtype=dtype, device=device)

    def forward(self, context, video):
        b, f, c, h, w = video.shape
        x = self.proj(video.reshape(b * f, c, h, w))
        x = x.view(b, f, *x.shape[1:]).flatten(3).transpose(2, 3).flatten(1, 2)
        return linear(self.text_proj, context), x


class ModulatedNorm(nn.Module):
    """LayerNorm of the joint [text; video] token stream with the timestep's shift/scale for each part;
    returns the modulated tokens and the video and text gates."""

    def __init__(self, time_dim, dim, config, operations, dtype, device):
        super().__init__()
        self.linear = operations.Linear(time_dim, 6 * dim, dtype=dtype, device=device)
        self.norm = operations.LayerNorm(dim, eps=config.norm_eps, elementwise_affine=config.norm_elementwise_affine,
                                         dtype=dtype, device=device)

    def forward(self, tokens, n_ctx, temb):
        shift, scale, gate, c_shift, c_scale, c_gate = self.linear(nn.functional.silu(temb))[:, None].chunk(6, dim=2)
        normed = self.norm(tokens)  # a fresh tensor: modulate each part in place
        normed[:, n_ctx:].mul_(1 + scale).add_(shift)
        normed[:, :n_ctx].mul_(1 + c_scale).add_(c_shift)
        return normed, gate, c_gate


def add_gated_(tokens, n_ctx, update, gate, c_gate):
    """Residual update of the joint stream in place: video += gate * update, text += c_gate * update."""
    tokens[:, n_ctx:].addcmul_(gate, update[:, n_ctx:])
    tokens[:, :n_ctx].addcmul_(c_gate, update[:, :n_ctx])


class JointAttention(nn.Module):
    def __init__(self, config: TransformerConfig, operations, dtype, device):
        super().__init__()
        dim, hd = config.inner_dim, config.attention_head_dim
        self.heads = config.num_attention_heads
        self.norm_q = operations.LayerNorm(hd, eps=1e-6, dtype=dtype, device=device)
        self.norm_k = operations.LayerNorm(hd, eps=1e-6, dtype=dtype, device=device)
        self.to_q = operations.Linear(dim, dim, bias=config.attention_bias, dtype=dtype, device=device)
        self.to_k = operations.Linear(dim, dim, bias=config.attention_bias, dtype=dtype, device=device)
        self.to_v = operations.Linear(dim, dim, bias=config.attention_bias, dtype=dtype, device=device)
        self.to_out = nn.ModuleList([operations.Linear(dim, dim, bias=True, dtype=dtype, device=device)])

    def forward(self, tokens, n_ctx, rope, attention):
        """tokens [B, S, D] = [text; video] -> attention output [B, S, D]."""
        b, s, _ = tokens.shape
        # [B, S, heads, head_dim] stays contiguous for the norms and the in-place rotation
        q = self.norm_q(linear(self.to_q, tokens).view(b, s, self.heads, -1))
        k = self.norm_k(linear(self.to_k, tokens).view(b, s, self.heads, -1))
        v = linear(self.to_v, tokens).view(b, s, self.heads, -1)
        if rope is not None:  # (cos, sin) or (cos, sin, pair rotation)
            rotate_pairs_(q[:, n_ctx:], *rope)
            rotate_pairs_(k[:, n_ctx:], *rope)
        out = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        del q, k, v  # gone before the output's layout copy and projection: the block's peak stays the FF's
        return linear(self.to_out[0], out.transpose(1, 2).reshape(b, s, -1))


def gelu_runs_in_place(device, dtype) -> bool:
    """Whether the FF's tanh GELU overwrites its input (the 4-stream hidden layer), so a block's activation peak
    holds one hidden layer, not two: everywhere but float32 on the CPU (see gelu_tanh)."""
    return not (torch.device(device).type == "cpu" and dtype == torch.float32)


def gelu_tanh(x):
    """GELU (tanh approximation), in place on `x` (the FF's fresh hidden layer) where gelu_runs_in_place, with
    torch's kernel and rounding. In float32 on CPU as x * sigmoid(2u), the same function, since torch's CPU tanh
    kernel is several times slower than its sigmoid."""
    if gelu_runs_in_place(x.device, x.dtype):
        if torch.is_grad_enabled() and x.requires_grad:
            return nn.functional.gelu(x, approximate="tanh")
        return torch.ops.aten.gelu_(x, approximate="tanh")
    k = 2.0 * math.sqrt(2.0 / math.pi)
    u = torch.addcmul(x.new_tensor(k), x, x, value=0.044715 * k)  # 2u / x in one pass
    return u.mul_(x).sigmoid_().mul_(x)


class _GeluProj(nn.Module):
    def __init__(self, dim, inner, operations, dtype, device):
        super().__init__()
        self.proj = operations.Linear(dim, inner, dtype=dtype, device=device)

    def forward(self, x):
        fused = fused_linear_gelu_tanh(self.proj, x)
        return fused if fused is not None else gelu_tanh(self.proj(x))


class FeedForward(nn.Module):
    def __init__(self, dim, operations, dtype, device, mult=4):
        super().__init__()
        self.net = nn.ModuleList([_GeluProj(dim, dim * mult, operations, dtype, device), nn.Identity(),
                                  operations.Linear(dim * mult, dim, dtype=dtype, device=device)])

    def forward(self, x):
        return linear(self.net[2], self.net[0](x))


class TransformerBlock(nn.Module):
    def __init__(self, config: TransformerConfig, operations, dtype, device):
        super().__init__()
        dim = config.inner_dim
        self.norm1 = ModulatedNorm(config.time_embed_dim, dim, config, operations, dtype, device)
        self.attn1 = JointAttention(config, operations, dtype, device)
        self.norm2 = ModulatedNorm(config.time_embed_dim, dim, config, operations, dtype, device)
        self.ff = FeedForward(dim, operations, dtype, device)

    def forward(self, tokens, n_ctx, temb, rope, attention):
        """Updates the joint [text; video] stream `tokens` [B, S, D] in place and returns it."""
        normed, gate, c_gate = self.norm1(tokens, n_ctx, temb)
        add_gated_(tokens, n_ctx, self.attn1(normed, n_ctx, rope, attention), gate, c_gate)
        normed, gate, c_gate = self.norm2(tokens, n_ctx, temb)
        add_gated_(tokens, n_ctx, self.ff(normed), gate, c_gate)
        return tokens


class AdaNormOut(nn.Module):
    def __init__(self, config, operations, dtype, device):
        super().__init__()
        dim = config.inner_dim
        self.linear = operations.Linear(config.time_embed_dim, 2 * dim, dtype=dtype, device=device)
        self.norm = operations.LayerNorm(dim, eps=config.norm_eps, elementwise_affine=config.norm_elementwise_affine,
                                         dtype=dtype, device=device)

    def forward(self, x, temb):
        shift, scale = self.linear(nn.functional.silu(temb)).chunk(2, dim=1)
        return self.norm(x) * (1 + scale)[:, None] + shift[:, None]


class EchoVideoTransformer(nn.Module):
    """forward(hidden_states [B, F, 2C, h, w], context [B, L, D] fused by `fuse_identity`,
    timestep [B], rope (cos, sin) [F*h*w/p^2, head_dim]) -> v-prediction [B, F, C, h, w]."""

    def __init__(self, config, operations=nn, dtype=None, device=None, attention="sdpa"):
        super().__init__()
        config = config if isinstance(config, TransformerConfig) else TransformerConfig.from_dict(config)
        config.validate()
        self.config = config
        self.attention = get_attention(attention)
        dim = config.inner_dim
        self.patch_embed = PatchEmbed(config, operations, dtype, device)
        self.time_embedding = TimestepMLP(dim, config.time_embed_dim, operations, dtype, device)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(config, operations, dtype, device) for _ in range(config.num_layers))
        self.norm_final = operations.LayerNorm(dim, eps=config.norm_eps,
                                               elementwise_affine=config.norm_elementwise_affine,
                                               dtype=dtype, device=device)
        self.norm_out = AdaNormOut(config, operations, dtype, device)
        self.proj_out = operations.Linear(dim, config.patch_size ** 2 * config.out_channels, dtype=dtype, device=device)
        iitf = IITF(config, operations, dtype, device)
        for name in IITF.SUBMODULES:
            self.add_module(name, getattr(iitf, name))
        self.block_hook = None  # optional object with before(index, block) / after(index, block): block swap

    def set_attention(self, attention) -> None:
        self.attention = get_attention(attention)

    def fuse_identity(self, text_embeds, face_tokens, id_embedding):
        """IITF: run once per prompt and guidance branch; the result is `context` for forward."""
        return fuse_identity(self, self.config, text_embeds, face_tokens, id_embedding)

    def check_inputs(self, hidden_states, context, timestep, rope=None):
        c = self.config
        check(hidden_states.dim() == 5 and hidden_states.shape[2] == c.in_channels
              and hidden_states.shape[3] % c.patch_size == 0 and hidden_states.shape[4] % c.patch_size == 0,
              "hidden_states", tuple(hidden_states.shape),
              f"[batch, latent frames, {c.in_channels}, h, w] with h and w multiples of {c.patch_size}")
        b = hidden_states.shape[0]
        check(context.dim() == 3 and context.shape[0] == b and context.shape[2] == c.text_embed_dim,
              "context", tuple(context.shape), f"[{b}, tokens, {c.text_embed_dim}] (the IITF-fused context)")
        check(timestep.dim() == 1 and timestep.shape[0] == b, "timestep", tuple(timestep.shape), f"[{b}]")
        if rope is not None:
            _, f, _, h, w = hidden_states.shape
            want = (f * (h // c.patch_size) * (w // c.patch_size), c.attention_head_dim)
            check(len(rope) == 2 and all(tuple(r.shape) == want for r in rope), "rope",
                  [tuple(r.shape) for r in rope], f"(cos, sin), each {want}: rotary_embedding_for_video for this "
                  "video's size and frame count")

    def embed(self, hidden_states, context, timestep):
        """Timestep embedding and patch embedding: (video tokens, context tokens, temb)."""
        c = self.config
        t = timestep_embedding(timestep, c.inner_dim, c.flip_sin_to_cos, c.freq_shift)
        temb = self.time_embedding(t.to(hidden_states.dtype))
        ctx, x = self.patch_embed(context, hidden_states)
        return x, ctx, temb

    def run_blocks(self, x, ctx, temb, rope):
        """All blocks on one joint [text; video] stream (a new tensor: x and ctx are not modified)."""
        n_ctx = ctx.shape[1]
        tokens = self.run_joint(torch.cat([ctx, x], dim=1), n_ctx, temb, rope)
        return tokens[:, n_ctx:], tokens[:, :n_ctx]

    def run_joint(self, tokens, n_ctx, temb, rope):
        """All blocks, updating the joint [text; video] stream `tokens` in place; returns it."""
        hook = self.block_hook
        if rope is not None and not torch.compiler.is_compiling():
            rope = (rope[0], rope[1], pair_rotation(rope[0], rope[1]))  # once for all blocks
        for i, block in enumerate(self.transformer_blocks):
            if hook is None:
                tokens = block(tokens, n_ctx, temb, rope, self.attention)
                continue
            try:  # a failing block (e.g. out of memory, also mid-swap) still gives a swapped block's weights back
                hook.before(i, block)
                tokens = block(tokens, n_ctx, temb, rope, self.attention)
            finally:
                hook.after(i, block)
        return tokens

    def modulated_video_input(self, x, ctx, temb):
        """The first block's timestep-modulated video tokens (the step cache's change signal). Runs inside the
        block hook, so a swapped-out first block is brought to the compute device for it."""
        n_ctx = ctx.shape[1]
        block, hook = self.transformer_blocks[0], self.block_hook
        if hook is not None:
            hook.before(0, block)
        try:
            return block.norm1(torch.cat([ctx, x], dim=1), n_ctx, temb)[0][:, n_ctx:]
        finally:
            if hook is not None:
                hook.after(0, block)

    def head(self, x, ctx, temb, shape):
        b, f, _, h, w = shape
        p = self.config.patch_size
        x = self.norm_final(x)  # per-token norm: the text tokens do not change the video's
        x = linear(self.proj_out, self.norm_out(x, temb))
        x = x.reshape(b, f, h // p, w // p, -1, p, p)
        return x.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)

    def forward(self, hidden_states, context, timestep, rope: Optional[Tuple[torch.Tensor, torch.Tensor]] = None):
        self.check_inputs(hidden_states, context, timestep, rope)
        x, ctx, temb = self.embed(hidden_states, context, timestep)
        n_ctx = ctx.shape[1]
        tokens = torch.cat([ctx, x], dim=1)
        del x, ctx  # held through the blocks, they would be one more stream at the activation peak
        tokens = self.run_joint(tokens, n_ctx, temb, rope)
        return self.head(tokens[:, n_ctx:], tokens[:, :n_ctx], temb, hidden_states.shape)
