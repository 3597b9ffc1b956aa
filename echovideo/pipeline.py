"""Whole generation outside ComfyUI: face tokens, IITF fusion (once per branch), face-frame latents,
sampling and decode. The ComfyUI nodes call the same steps one by one."""
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from . import siglip as siglip_lib
from . import vae as vae_lib
from .errors import check
from .sampling import compute_dtype_of, sample
from .video import check_video_size


@dataclass
class FusedConditioning:
    """IITF-fused contexts: positive [1, L, D]; negative (None when guidance is off)."""
    positive: torch.Tensor
    negative: Optional[torch.Tensor]


def reference_id_embedding(id_embedding) -> torch.Tensor:
    """[1, 512] float32, rounded to bfloat16 as the reference does before use."""
    e = torch.as_tensor(np.asarray(id_embedding) if not torch.is_tensor(id_embedding) else id_embedding)
    e = e.float().reshape(1, -1) if e.dim() == 1 else e.float()
    check(e.dim() == 2 and e.shape[0] == 1 and e.shape[1] == 512, "id_embedding", tuple(e.shape), "[512] or [1, 512]")
    return e.to(torch.bfloat16).float()


def face_tokens_pair(siglip_model, face_uint8: np.ndarray):
    """SigLIP tokens of the face and of an all-black image of the same size (the unconditional branch)."""
    size = siglip_lib.image_size_of(siglip_model)
    pos = siglip_lib.face_tokens(siglip_model, siglip_lib.siglip_pixel_values(face_uint8, size))
    neg = siglip_lib.face_tokens(siglip_model, siglip_lib.siglip_pixel_values(np.zeros_like(face_uint8), size))
    return pos, neg


@torch.no_grad()
def fuse_conditioning(dit, text_positive, text_negative, face_tokens, negative_face_tokens, id_embedding,
                      with_negative: bool = True, device=None) -> FusedConditioning:
    """IITF once per branch. Negative: negative prompt, black-image face tokens, zero ArcFace embedding.
    device: where IITF runs (default: the first weight's device)."""
    device = torch.device(device) if device is not None else next(dit.parameters()).device
    dtype = compute_dtype_of(dit)

    def run(text, face, ident):
        return dit.fuse_identity(text.to(device, dtype), face.to(device, dtype), ident.to(device, dtype))

    ident = reference_id_embedding(id_embedding)
    positive = run(text_positive, face_tokens, ident)
    negative = run(text_negative, negative_face_tokens, torch.zeros_like(ident)) if with_negative else None
    return FusedConditioning(positive, negative)


def generate(dit, vae, siglip_model, text_positive, text_negative, face_crop: np.ndarray, id_embedding,
             width: int, height: int, num_frames: int, steps: int = 50, guidance_scale: float = 6.0,
             dynamic_cfg: bool = True, seed: int = 42, reference_image: Optional[np.ndarray] = None,
             callback=None, decode: bool = True, tiling: bool = True, dit_caller=None):
    """Frames [decoded_frame_count(num_frames), H, W, 3] in [0, 1] (or latents when decode=False)."""
    check_video_size(width, height, num_frames)
    image = face_crop if reference_image is None else reference_image  # SigLIP's input and the first frame
    face_pos, face_neg = face_tokens_pair(siglip_model, image)
    cond = fuse_conditioning(dit, text_positive, text_negative, face_pos, face_neg, id_embedding,
                             with_negative=guidance_scale > 1.0)
    image_latents = vae_lib.encode_face_frame(vae, image, width, height, num_frames, keep_proportions=True)
    latents = sample(dit, cond.positive, cond.negative, image_latents, steps=steps, guidance_scale=guidance_scale,
                     dynamic_cfg=dynamic_cfg, seed=seed, callback=callback, dit_caller=dit_caller)
    if not decode:
        return latents
    return vae_lib.decode_to_images(vae, latents, tiling=tiling)
