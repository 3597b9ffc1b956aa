"""Transformer config: the released EchoVideo `transformer/config.json` and its validation."""
import dataclasses
from dataclasses import dataclass, fields

from .errors import CheckpointError


@dataclass(frozen=True)
class TransformerConfig:
    num_attention_heads: int = 48
    attention_head_dim: int = 64
    in_channels: int = 32
    out_channels: int = 16
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    time_embed_dim: int = 512
    text_embed_dim: int = 4096
    face_embed_dim: int = 768
    face_features_embed_dim: int = 512
    num_layers: int = 42
    dropout: float = 0.0
    attention_bias: bool = True
    sample_width: int = 90
    sample_height: int = 60
    sample_frames: int = 49
    patch_size: int = 2
    temporal_compression_ratio: int = 4
    max_text_seq_length: int = 226
    face_seq_length: int = 196
    face_features_seq_length: int = 144
    activation_fn: str = "gelu-approximate"
    timestep_activation_fn: str = "silu"
    norm_elementwise_affine: bool = True
    norm_eps: float = 1e-5
    spatial_interpolation_scale: float = 1.875
    temporal_interpolation_scale: float = 1.0
    use_rotary_positional_embeddings: bool = True
    use_learned_positional_embeddings: bool = False
    ofs_embed_dim: object = None
    patch_size_t: object = None
    patch_bias: bool = True

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def latent_channels(self) -> int:
        return self.out_channels

    @classmethod
    def from_dict(cls, d: dict) -> "TransformerConfig":
        other = other_model_config(d)
        if other:
            what, fix = other
            raise CheckpointError(f"the config is {what}, not the EchoVideo transformer's: {fix}{PICK_TRANSFORMER}")
        known = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in d.items() if k in known})
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        unsupported = []
        if not self.use_rotary_positional_embeddings:
            unsupported.append("use_rotary_positional_embeddings=False (CogVideoX-2B style)")
        if self.use_learned_positional_embeddings:
            unsupported.append("use_learned_positional_embeddings=True")
        if self.ofs_embed_dim is not None:
            unsupported.append(f"ofs_embed_dim={self.ofs_embed_dim} (CogVideoX 1.5)")
        if self.patch_size_t is not None:
            unsupported.append(f"patch_size_t={self.patch_size_t} (CogVideoX 1.5)")
        if self.activation_fn != "gelu-approximate" or self.timestep_activation_fn != "silu":
            unsupported.append("activation functions other than gelu-approximate/silu")
        if self.in_channels != 2 * self.out_channels:
            unsupported.append(
                f"in_channels={self.in_channels} with out_channels={self.out_channels}: EchoVideo needs "
                f"in_channels = 2 x out_channels (noise latents + face-frame latents)")
        if unsupported:
            raise CheckpointError("transformer config is not an EchoVideo (CogVideoX-5B + IITF) config: "
                                  + "; ".join(unsupported) + f"; {PICK_TRANSFORMER}")


PICK_TRANSFORMER = ("pick the EchoVideo transformer here (the release's transformer/ folder, or one merged "
                    ".safetensors; README: Models)")


def other_model_config(d: dict):
    """(what, fix) for another kind of model's config (a VAE's, a transformers model's), or None."""
    class_name = d.get("_class_name")
    if isinstance(class_name, str) and class_name.startswith("Autoencoder") or "down_block_types" in d:
        return f"a VAE's ({class_name or 'down_block_types'})", "load it with EchoVideo VAE Loader, and "
    if d.get("model_type") is not None:
        return f"a transformers {d['model_type']!r} model's (a text or vision encoder)", ""
    return None


RELEASED_CONFIG = TransformerConfig()
