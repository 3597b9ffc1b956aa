"""SigLIP face tokens: the reference's preprocessing and the vision model's last hidden state."""

import numpy as np
import torch
from PIL import Image

from .errors import CheckpointError, check


def siglip_pixel_values(face_uint8: np.ndarray, image_size: int) -> torch.Tensor:
    """[1, 3, S, S]: PIL bicubic resize of the uint8 face, /255, (x - 0.5) / 0.5, rounded to bfloat16."""
    check(isinstance(face_uint8, np.ndarray) and face_uint8.dtype == np.uint8 and face_uint8.ndim == 3
          and face_uint8.shape[2] == 3, "face image", getattr(face_uint8, "shape", type(face_uint8)),
          "a uint8 H x W x 3 RGB array")
    resized = np.asarray(Image.fromarray(face_uint8).resize((image_size, image_size), Image.BICUBIC))
    x = (resized.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.float32(0.5)) / np.float32(0.5)
    t = torch.from_numpy(x).permute(2, 0, 1).unsqueeze(0).contiguous()
    return t.to(torch.bfloat16).float()


def build_siglip(vision_config: dict, dtype=torch.float32, device="cpu"):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    # a config saved with only its non-default values names its type and leaves the rest to transformers
    needed = [k for k in ("hidden_size", "image_size", "patch_size") if k not in vision_config]
    if needed and vision_config.get("model_type") != "siglip_vision_model":
        raise CheckpointError(f"the config is not a SigLIP vision config (no {', '.join(needed)}); "
                              "use google/siglip-base-patch16-224")
    config = SiglipVisionConfig(**{k: v for k, v in vision_config.items() if not k.startswith("_")})
    model = SiglipVisionModel(config)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def load_siglip_state(model, state: dict):
    """Loads `vision_model.*` keys (transformers 4.x layout) into either transformers layout.
    Returns the missing keys (position_ids buffers excluded)."""
    vision = {k: v for k, v in state.items() if k.startswith("vision_model.")}
    own = model.state_dict()
    if not any(k.startswith("vision_model.") for k in own):
        vision = {k[len("vision_model."):]: v for k, v in vision.items()}
    resized = [k for k, v in vision.items() if k in own and v.shape != own[k].shape]
    if resized:
        # the patch embedding shows size and patch at once
        k = next((k for k in resized if k.endswith("patch_embedding.weight")), resized[0])
        raise CheckpointError(
            f"a vision model of another size or patch: {k} is {list(vision[k].shape)}, SigLIP's is "
            f"{list(own[k].shape)} ({len(resized)} weights differ); use google/siglip-base-patch16-224 "
            f"(hidden size 768, 16-pixel patches, 224 px)")
    missing, _ = model.load_state_dict(vision, strict=False)
    return [k for k in missing if "position_ids" not in k] if vision else list(own)


def load_siglip(path: str, dtype=torch.float32, device="cpu"):
    """SiglipVisionModel from a folder (config.json + model.safetensors, vision or full SigLIP config)
    or a single .safetensors whose metadata key "config" holds the vision config."""
    from .checkpoint import read_config_and_weights

    cfg, state = read_config_and_weights(path, "SigLIP", _siglip_base_config())
    cfg = cfg.get("vision_config", cfg)
    try:
        model = build_siglip(cfg, dtype=dtype, device=device)
        missing = load_siglip_state(model, state)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if missing:
        raise CheckpointError(
            f"{path} is not a SigLIP vision model (google/siglip-base-patch16-224): "
            f"missing {missing[:3] or 'all vision_model.* keys'}")
    return model


def _siglip_base_config() -> dict:
    """google/siglip-base-patch16-224's vision config."""
    return dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                num_channels=3, image_size=224, patch_size=16, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh")


@torch.no_grad()
def face_tokens(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Last hidden state [B, tokens, hidden] of SigLIP for the given pixel values."""
    p = next(model.parameters())
    return model(pixel_values.to(device=p.device, dtype=p.dtype)).last_hidden_state.float()


def image_size_of(model) -> int:
    return int(model.config.image_size)
