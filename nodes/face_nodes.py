"""EchoVideo Face Encoder Loader, EchoVideo Face Encode, EchoVideo IITF Fusion."""
from __future__ import annotations

import os

import numpy as np
import torch

from echovideo.errors import FACE_PACKAGES, MissingPackageError, import_failure, missing_packages

from . import bridge
from .bridge import io
from .types import (Conditioning, ConditioningData, FaceEncoder, FaceEncoderBundle, Identity, IdentityData, Model,
                    TextEmbeds)

CATEGORY = "EchoVideo"
NO_SIGLIP = "(no SigLIP in models/clip_vision)"
FACE_DEVICES = ["auto", "cpu"]


def siglip_choices() -> list:
    return bridge.model_entries("clip_vision") or [NO_SIGLIP]


def find_face_model_paths():
    """FaceModelPaths from the first insightface folder holding models/antelopev2 and the first facexlib
    folder holding both .pth files; a clear error naming every folder searched otherwise."""
    from echovideo.face import BISENET_FILE, DETECTOR_FILE, RECOGNIZER_FILE, RETINAFACE_FILE, FaceModelPaths

    root, fdir = bridge.face_model_dirs()
    problems = []
    if root is None:
        problems.append(f"insightface antelopev2 ({DETECTOR_FILE}, {RECOGNIZER_FILE}) not found; searched "
                        f"<folder>/models/antelopev2/ for the 'insightface' folders: "
                        f"{', '.join(bridge.folders('insightface')) or '(none)'}")
    if fdir is None:
        problems.append(f"facexlib files ({RETINAFACE_FILE}, {BISENET_FILE}) not found; searched the 'facexlib' "
                        f"folders: {', '.join(bridge.folders('facexlib')) or '(none)'}")
    if problems:
        raise FileNotFoundError(f"EchoVideo: {'; '.join(problems)} -- {bridge.README_HINT}."
                                f"{bridge.also_missing(['insightface', 'facexlib'])}")
    return FaceModelPaths(insightface_root=root, facexlib_dir=fdir)


class FaceEncoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EchoVideoFaceEncoderLoader",
            display_name="EchoVideo Face Encoder Loader",
            category=CATEGORY,
            description="Loads the identity encoders: insightface antelopev2 (models/insightface/models/antelopev2), "
                        "facexlib RetinaFace + BiSeNet (models/facexlib) and SigLIP (models/clip_vision).",
            inputs=[
                io.Combo.Input("siglip_name", options=siglip_choices(),
                               tooltip="SigLIP vision model (google/siglip-base-patch16-224) file or folder under "
                                       "models/clip_vision."),
                io.Combo.Input("face_device", options=FACE_DEVICES, default="auto",
                               tooltip="Where face detection/recognition runs. auto: the GPU (ONNX models on it "
                                       "when onnxruntime-gpu is installed), freed after each Face Encode; cpu: "
                                       "kept loaded on the CPU."),
            ],
            outputs=[FaceEncoder.Output(display_name="face_encoder", tooltip="Face models + SigLIP.")],
        )

    @classmethod
    def validate_inputs(cls, siglip_name=None, face_device=None):
        from .model_nodes import entry_problem

        package_problem = face_problem = None
        try:
            find_face_model_paths()
        except FileNotFoundError as e:
            face_problem = str(e)
        except ImportError as e:  # e.g. opencv missing after a failed install: say so at queue time
            package_problem = import_failure(e, "the face pipeline")
        missing = missing_packages(*FACE_PACKAGES)  # imported only when the models load: found, not imported
        if missing and package_problem is None:
            package_problem = MissingPackageError(missing, "the face pipeline")
        package_problem = package_problem and f"EchoVideo Face Encoder Loader: {package_problem}"
        return bridge.queue_time_result(
            package_problem,
            face_problem or entry_problem("clip_vision", siglip_name),  # one "also missing" list, as at run time
            bridge.choice_problem("EchoVideo Face Encoder Loader", "face_device", face_device, FACE_DEVICES))

    @classmethod
    def execute(cls, siglip_name, face_device="auto") -> io.NodeOutput:
        from echovideo.face import load_face_models, release_face_models
        from echovideo.siglip import load_siglip

        from .model_nodes import named_errors, resolve_entry

        paths = find_face_model_paths()
        device = "cpu" if face_device == "cpu" else str(bridge.torch_device())
        models = load_face_models(paths, device)  # fail early on broken files; cached by the face pipeline
        if device != "cpu":  # VRAM outside ComfyUI's accounting: Face Encode loads them again when it runs
            release_face_models(models)
        spath = resolve_entry("clip_vision", siglip_name if siglip_name != NO_SIGLIP else "")
        dtype = bridge.compute_dtype(bridge.load_device("text"))
        with named_errors("EchoVideo Face Encoder Loader", spath, "a SigLIP vision model"):
            siglip = load_siglip(spath, dtype=torch.float32, device="cpu").to(dtype)
        return io.NodeOutput(FaceEncoderBundle(face_models=(paths, device), siglip=bridge.wrap(siglip, kind="text"),
                                               siglip_path=spath))


def images_to_uint8(image: torch.Tensor) -> list:
    """ComfyUI IMAGE [B, H, W, C] float in [0, 1] -> B photos, H x W x 3 uint8."""
    from echovideo.face.image import to_uint8_rgb

    if image is None or image.dim() != 4 or image.shape[0] == 0:
        raise ValueError(f"EchoVideo: image batch is empty or not an IMAGE (got "
                         f"{None if image is None else tuple(image.shape)}); connect at least one photo")
    return [to_uint8_rgb(photo) for photo in image]


def image_to_uint8(image: torch.Tensor) -> np.ndarray:
    """The first photo of a ComfyUI IMAGE as H x W x 3 uint8."""
    return images_to_uint8(image[:1] if torch.is_tensor(image) else image)[0]


def uint8_to_image(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).float().div(255.0).unsqueeze(0)


class FaceEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EchoVideoFaceEncode",
            display_name="EchoVideo Face Encode",
            category=CATEGORY,
            description="Finds the face in the photo(s): ArcFace identity embedding, parsed aligned face crop, and "
                        "SigLIP face tokens. Outputs the identity and the reference image for Face Frame Encode.",
            inputs=[
                FaceEncoder.Input("face_encoder", tooltip="EchoVideo Face Encoder Loader output."),
                io.Image.Input("image", tooltip="Photo(s) of the person. Several photos: see average_embeddings."),
                io.Int.Input("face_index", default=0, min=0, max=63,
                             tooltip="Which face when the photo has several: 0 = the largest (with only the "
                                     "fallback RetinaFace detector finding faces: 0 = the one nearest the centre)."),
                io.Boolean.Input("whole_image", default=False,
                                 tooltip="Use the whole photo (clothes, body) instead of the parsed face crop for the "
                                         "SigLIP tokens and the reference frame (the published code's non-aligned "
                                         "mode). The ArcFace identity embedding still comes from the face."),
                io.Boolean.Input("average_embeddings", default=False,
                                 tooltip="With several photos: average their ArcFace embeddings (the first photo "
                                         "gives the face crop)."),
            ],
            outputs=[
                Identity.Output(display_name="identity", tooltip="ArcFace embedding + SigLIP face tokens."),
                io.Image.Output(display_name="reference_image",
                                tooltip="Face crop (or the whole photo with whole_image) for Face Frame Encode."),
                io.Image.Output(display_name="face_crops", tooltip="The parsed aligned face crop of every photo."),
            ],
        )

    @classmethod
    def execute(cls, face_encoder, image, face_index=0, whole_image=False, average_embeddings=False) -> io.NodeOutput:
        from echovideo.face import extract_identities, load_face_models, release_face_models
        from echovideo.pipeline import face_tokens_pair, reference_id_embedding

        photos = images_to_uint8(image)
        if len(photos) > 1 and not average_embeddings:
            raise ValueError(f"EchoVideo Face Encode: image holds {len(photos)} photos, but one identity is made "
                             "per run: turn average_embeddings on to combine them, or connect one photo")
        paths, device = face_encoder.face_models
        if device != "cpu":  # weights plus about as much again for the runtimes' work buffers
            bridge.make_room(2 * sum(os.path.getsize(f) for f in paths.files if os.path.isfile(f)), device)
        models = load_face_models(paths, device)
        progress = bridge.Progress(len(photos), previews=False)

        def on_photo(done, total):  # cancel between photos; a batch shows its progress
            bridge.check_interrupt()
            progress(done, total)

        try:
            idents = extract_identities(models, photos, face_index=int(face_index), whole_image=bool(whole_image),
                                        average_embeddings=bool(average_embeddings), on_photo=on_photo)
        finally:
            if device != "cpu":  # outside ComfyUI's accounting: free the VRAM before the DiT needs it
                release_face_models(models)
        first = idents[0]
        bridge.load_gpu(face_encoder.siglip)
        # the published code's one "face image": the parsed crop, or with whole_image the whole photo
        pos, neg = face_tokens_pair(bridge.unwrap(face_encoder.siglip), first.reference_image)
        out = bridge.intermediate_device()
        identity = IdentityData(id_embedding=reference_id_embedding(first.id_embedding).to(out),
                                face_tokens=pos.to(out), face_crop=torch.from_numpy(first.face_crop),
                                extra={"negative_face_tokens": neg.to(out), "face_count": first.face_count,
                                       "detector": first.detector})
        crops = torch.cat([uint8_to_image(i.face_crop) for i in idents], dim=0)
        return io.NodeOutput(identity, uint8_to_image(first.reference_image), crops)


class IITFFusion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EchoVideoIITFFusion",
            display_name="EchoVideo IITF Fusion",
            category=CATEGORY,
            description="IITF: fuses the identity (ArcFace + SigLIP face tokens) into the text embeddings, once per "
                        "guidance branch. Negative branch: negative prompt, black-image face tokens, zero ArcFace.",
            inputs=[
                Model.Input("model", tooltip="EchoVideo Model Loader output (holds the IITF weights)."),
                TextEmbeds.Input("text", tooltip="EchoVideo Text Encode output."),
                Identity.Input("identity", tooltip="EchoVideo Face Encode output."),
            ],
            outputs=[Conditioning.Output(display_name="conditioning", tooltip="Fused contexts for the sampler.")],
        )

    @classmethod
    def execute(cls, model, text, identity) -> io.NodeOutput:
        from echovideo.pipeline import fuse_conditioning

        cfg = model.config
        for name, t in (("positive", text.positive), ("negative", text.negative)):
            if tuple(t.shape[1:]) != (cfg.max_text_seq_length, cfg.text_embed_dim):
                raise ValueError(f"EchoVideo IITF Fusion: {name} text embeddings are {tuple(t.shape)}, the model "
                                 f"needs [1, {cfg.max_text_seq_length}, {cfg.text_embed_dim}]: use the T5-XXL "
                                 "text encoder (4096 dims) with EchoVideo Text Encode")
        want = (1, cfg.face_seq_length, cfg.face_embed_dim)
        if tuple(identity.face_tokens.shape) != want:
            raise ValueError(f"EchoVideo IITF Fusion: identity's SigLIP face tokens are "
                             f"{tuple(identity.face_tokens.shape)}, the model needs {list(want)}: pick "
                             "siglip-base-patch16-224 (google/siglip-base-patch16-224, the SigLIP EchoVideo was "
                             "trained with) in EchoVideo Face Encoder Loader")
        bridge.load_gpu(model.patcher)
        neg_tokens = identity.extra.get("negative_face_tokens")
        fused = fuse_conditioning(model.model, text.positive, text.negative, identity.face_tokens, neg_tokens,
                                  identity.id_embedding, with_negative=True, device=model.device)
        out = bridge.intermediate_device()
        return io.NodeOutput(ConditioningData(positive=fused.positive.to(out), negative=fused.negative.to(out)))


NODES = [FaceEncoderLoader, FaceEncode, IITFFusion]
