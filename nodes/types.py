"""Custom io types passed between EchoVideo nodes, and the objects they carry."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from echovideo.step_cache import DEFAULT_THRESHOLD, DEFAULT_WARMUP_STEPS

from .bridge import io, unwrap


T5Encoder = io.Custom("ECHOVIDEO_T5")
TextEmbeds = io.Custom("ECHOVIDEO_TEXT")
Model = io.Custom("ECHOVIDEO_MODEL")
Vae = io.Custom("ECHOVIDEO_VAE")
FaceEncoder = io.Custom("ECHOVIDEO_FACE_ENCODER")
Identity = io.Custom("ECHOVIDEO_IDENTITY")
Conditioning = io.Custom("ECHOVIDEO_CONDITIONING")
ImageLatents = io.Custom("ECHOVIDEO_IMAGE_LATENTS")


@dataclass
class T5Bundle:
    """ECHOVIDEO_T5: our transformers T5 encoder (in a ModelPatcher) and its tokenizer."""
    patcher: Any
    tokenizer: Any
    path: str


@dataclass
class TextEmbedsData:
    """ECHOVIDEO_TEXT: reference T5 embeddings [1, 226, D] for both guidance branches."""
    positive: torch.Tensor
    negative: torch.Tensor
    positive_prompt: str = ""
    negative_prompt: str = ""


@dataclass
class ModelBundle:
    """ECHOVIDEO_MODEL: the EchoVideo DiT in a ModelPatcher."""
    patcher: Any
    path: str
    weight_dtype: torch.dtype
    compute_dtype: torch.dtype
    step_cache: Optional["StepCacheSettings"] = None  # set on a copy by EchoVideo Step Cache
    compile: Optional["CompileSettingsData"] = None  # set on a copy by EchoVideo Compile Settings

    @property
    def model(self):
        return unwrap(self.patcher)

    @property
    def config(self):
        return unwrap(self.patcher).config

    @property
    def device(self):
        """Where the DiT computes: ComfyUI's load device (weights may be partly offloaded)."""
        return self.patcher.load_device


@dataclass(frozen=True)
class CompileSettingsData:
    """torch.compile options for the repeated DiT block (applied by the Sampler)."""
    backend: str = "inductor"
    mode: Optional[str] = None
    dynamic: Optional[bool] = None


@dataclass(frozen=True)
class StepCacheSettings:
    threshold: float = DEFAULT_THRESHOLD
    warmup_steps: int = DEFAULT_WARMUP_STEPS


@dataclass
class VaeBundle:
    """ECHOVIDEO_VAE: the CogVideoX VAE in a ModelPatcher."""
    patcher: Any
    path: str
    dtype: torch.dtype

    @property
    def vae(self):
        return unwrap(self.patcher)


@dataclass
class FaceEncoderBundle:
    """ECHOVIDEO_FACE_ENCODER: where the face models (detector, parser, ArcFace) load from + SigLIP."""
    face_models: Any  # (FaceModelPaths, device): loaded (and cached) by the face pipeline when used
    siglip: Any  # ModelPatcher around the SigLIP vision model
    siglip_path: str


@dataclass
class IdentityData:
    """ECHOVIDEO_IDENTITY: ArcFace embedding [1, 512], SigLIP face tokens [1, N, 768], aligned face crop."""
    id_embedding: torch.Tensor
    face_tokens: torch.Tensor
    face_crop: torch.Tensor  # [H, W, 3] uint8
    extra: dict = field(default_factory=dict)


@dataclass
class ConditioningData:
    """ECHOVIDEO_CONDITIONING: IITF-fused DiT contexts [1, 226, D] for both guidance branches."""
    positive: torch.Tensor
    negative: torch.Tensor


@dataclass
class ImageLatentsData:
    """ECHOVIDEO_IMAGE_LATENTS: VAE latents of the face frame [1, F, C, h, w] and the video size."""
    latents: torch.Tensor
    width: int
    height: int
    num_frames: int
    face_crop: Optional[torch.Tensor] = None
