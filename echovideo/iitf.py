"""IITF: fuses the ArcFace identity, the SigLIP face tokens and the text embedding into the DiT context.

The published model reruns this inside every DiT call; here it is its own step, run once per
prompt and guidance branch, and the DiT takes the fused context directly.
"""
import torch
from torch import nn

from .errors import check
from .resampler import IdentityResampler

ID_TOKEN_REPEATS = 144  # the reference repeats the ArcFace embedding to 144 tokens


class IITF(nn.Module):
    """The identity modules. They live at the top level of the DiT's state dict (released key layout),
    so the transformer registers these submodules under the same names."""

    SUBMODULES = ("face_proj", "text_proj", "face_info_proj", "face_prj_wofc")

    def __init__(self, config, operations=nn, dtype=None, device=None):
        super().__init__()
        resampler = IdentityResampler(embedding_dim=config.face_features_embed_dim,
                                      output_dim=config.face_embed_dim,
                                      operations=operations, dtype=dtype, device=device)
        n_id = resampler.num_queries
        self.face_proj = operations.Linear(config.face_embed_dim, config.text_embed_dim, dtype=dtype, device=device)
        self.text_proj = operations.Linear(config.face_seq_length + config.max_text_seq_length,
                                           config.max_text_seq_length, dtype=dtype, device=device)
        self.face_info_proj = operations.Linear(config.face_seq_length + n_id, config.face_seq_length,
                                                dtype=dtype, device=device)
        self.face_prj_wofc = resampler


def fuse_identity(modules, config, text_embeds, face_tokens, id_embedding):
    """Fused context [B, L, D] from text [B, L, D], face tokens [B, N, face_embed_dim], ArcFace [B, 512].

    `modules` is anything holding the IITF submodules (the transformer or an IITF)."""
    b = text_embeds.shape[0] if text_embeds.dim() == 3 else None
    check(text_embeds.dim() == 3 and tuple(text_embeds.shape[1:]) == (config.max_text_seq_length, config.text_embed_dim),
          "text_embeds", tuple(text_embeds.shape), f"[batch, {config.max_text_seq_length}, {config.text_embed_dim}]")
    check(face_tokens.dim() == 3 and tuple(face_tokens.shape) == (b, config.face_seq_length, config.face_embed_dim),
          "face_tokens", tuple(face_tokens.shape), f"[{b}, {config.face_seq_length}, {config.face_embed_dim}]")
    check(id_embedding.dim() == 2 and tuple(id_embedding.shape) == (b, config.face_features_embed_dim),
          "id_embedding", tuple(id_embedding.shape), f"[{b}, {config.face_features_embed_dim}]")
    id_tokens = id_embedding.unsqueeze(1).expand(-1, ID_TOKEN_REPEATS, -1)
    identity = modules.face_prj_wofc(id_tokens)
    face = torch.cat([identity, face_tokens.to(identity.dtype)], dim=1)
    face = modules.face_info_proj(face.transpose(1, 2)).transpose(1, 2)
    face = modules.face_proj(face)
    context = torch.cat([face, text_embeds.to(face.dtype)], dim=1)
    return modules.text_proj(context.transpose(1, 2)).transpose(1, 2).contiguous()
