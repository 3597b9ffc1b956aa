"""Photo -> face identity (ArcFace embedding + parsed aligned face crop)."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence

import cv2
import numpy as np
import torch

from .align import FACE_SIZE, align_face
from .detect import Detection, FaceDetector, InsightFaceDetector, RetinaFaceDetector, order_by_size, order_centre_first
from .errors import FaceError, FaceIndexError, NoFaceFoundError
from .image import MAX_LONG_SIDE, resize_long_side, to_uint8_rgb
from .parse import parse_face

# SCRFD's smallest anchors are 16 px on its 640 input (~26 px on a 1024 photo); ask for more,
# which also keeps the 112 px ArcFace crop from being mostly upsampled blur.
MIN_FACE_PIXELS = 64

log = logging.getLogger("echovideo")


@dataclass
class FaceIdentity:
    """The identity taken from one photo.

    id_embedding: [512] ArcFace (antelopev2 glintr100) embedding, not normalised; float32 holding float16 values,
        as the published infer.py extracts it in float16 (the pipeline then rounds it to bfloat16).
        With average_embeddings it is the batch average; photo_embedding is this photo's own.
    face_crop: 512x512x3 uint8 RGB parsed aligned face (always).
    reference_image: uint8 RGB image SigLIP reads and the first frame shows: face_crop by default,
        or the whole downscaled photo when whole_image=True.
    keypoints: [5,2] float32 keypoints in the downscaled photo (eyes, nose, mouth corners).
    bbox: [4] x1,y1,x2,y2 in the downscaled photo.
    detector: "insightface" or "retinaface" (the fallback) or an injected detector's name.
    """

    id_embedding: torch.Tensor
    face_crop: np.ndarray
    reference_image: np.ndarray
    keypoints: np.ndarray
    bbox: Optional[np.ndarray]
    detector: str
    det_score: float = 0.0
    face_index: int = 0
    face_count: int = 1
    aligned_face: Optional[np.ndarray] = None  # 512x512x3 uint8 RGB aligned, before parsing
    photo_embedding: Optional[torch.Tensor] = None
    image: Optional[np.ndarray] = None  # the downscaled photo, uint8 RGB


def _no_face_message(original_long: int, used_long: int) -> str:
    n = int(math.ceil(MIN_FACE_PIXELS * original_long / max(used_long, 1)))
    return (
        "no face found in the input image; use a photo where the face is visible "
        f"and at least {n} pixels wide"
    )


def face_width_pixels(det: Detection, photo_scale: float) -> float:
    """The detected face's box width in the original photo's pixels."""
    return float(det.bbox[2] - det.bbox[0]) * photo_scale


def _warn_if_small(det: Detection, photo_scale: float) -> None:
    width = face_width_pixels(det, photo_scale)
    if width < MIN_FACE_PIXELS:  # used as found, as the published code does, but the identity will be weak
        log.warning("EchoVideo: the face used is about %d pixels wide in the photo, under %d: its identity will be "
                    "weak; use a photo where the face is at least %d pixels wide", round(width), MIN_FACE_PIXELS,
                    MIN_FACE_PIXELS)


def _first_face_rule(detector_name: str) -> str:
    """How the detector orders faces (see detect.py): insightface by size, the RetinaFace fallback centre first."""
    return "face nearest the centre, then by size" if detector_name == "retinaface" else "largest face"


def _pick(dets: list[Detection], face_index: int, detector_name: str) -> Detection:
    if face_index >= len(dets):
        found = f"{len(dets)} face was" if len(dets) == 1 else f"{len(dets)} faces were"
        raise FaceIndexError(
            f"face_index {face_index} is out of range: {found} found in the input image "
            f"(by {detector_name}); face_index 0 is the {_first_face_rule(detector_name)}, use 0 to {len(dets) - 1}"
        )
    return dets[face_index]


def _embed_detected(recognizer, image_bgr: np.ndarray, det: Detection) -> np.ndarray:
    """ArcFace on insightface's own 112x112 norm_crop, as FaceAnalysis.get does."""
    from insightface.app.common import Face

    import warnings

    face = Face(bbox=det.bbox, kps=det.kps, det_score=det.score)
    with warnings.catch_warnings():  # scikit-image's estimate() deprecation inside insightface
        warnings.simplefilter("ignore", FutureWarning)
        recognizer.get(image_bgr, face)
    return np.asarray(face.embedding, dtype=np.float32).reshape(-1)


def extract_identity(
    models,
    image_rgb_uint8,
    face_index: int = 0,
    whole_image: bool = False,
    detector: Optional[FaceDetector] = None,
    fallback_detector: Optional[FaceDetector] = None,
) -> FaceIdentity:
    """One photo -> FaceIdentity, following the published EchoVideo face code.

    1. RGB uint8 (floats in [0,1] accepted), long side downscaled to <= 1024 (LANCZOS4).
    2. insightface SCRFD (det size 640): faces ordered by box area, largest first;
       face_index picks one (0 = largest, as published). Its ArcFace embedding
       comes from insightface's 112x112 crop of the photo.
    3. No insightface face: facexlib RetinaFace (threshold 0.97); order is the
       face nearest the centre first (published choice), then the rest by size.
       The embedding is ArcFace on the 512x512 aligned BGR crop (published).
    4. 5-point similarity alignment to 512x512, BiSeNet parsing -> face_crop.
    Neither detector finding a face raises NoFaceFoundError (no whole-image fallback);
    face_index past the faces found raises FaceIndexError.

    whole_image=True (the published code's is_align_face=False; its infer.py keeps alignment on):
    reference_image, which SigLIP reads and the first frame shows, is the whole downscaled photo
    (clothes and body kept) instead of the parsed crop; the embedding still comes from the detected face.
    `detector` / `fallback_detector` replace insightface / RetinaFace (tests, tools).
    """
    if not isinstance(face_index, (int, np.integer)) or isinstance(face_index, bool) or face_index < 0:
        raise FaceError(f"face_index: got {face_index!r}, needs an integer >= 0 (0 = largest face)")
    face_index = int(face_index)
    rgb_full = to_uint8_rgb(image_rgb_uint8)
    rgb = resize_long_side(rgb_full, MAX_LONG_SIDE)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)

    primary = detector if detector is not None else InsightFaceDetector(models.detector)
    dets = order_by_size(primary.detect(bgr))
    used = primary
    if not dets:
        used = fallback_detector if fallback_detector is not None else RetinaFaceDetector(models.retinaface)
        dets = order_centre_first(used.detect(bgr), bgr.shape[0], bgr.shape[1])
        if not dets:
            raise NoFaceFoundError(_no_face_message(max(rgb_full.shape[:2]), max(rgb.shape[:2])))
    det = _pick(dets, face_index, used.name)
    _warn_if_small(det, max(rgb_full.shape[:2]) / max(rgb.shape[:2]))

    aligned_bgr, _ = align_face(bgr, det.kps, FACE_SIZE)
    if used is primary:
        emb = _embed_detected(models.recognizer, bgr, det)
    else:
        emb = np.asarray(models.recognizer.get_feat(aligned_bgr), dtype=np.float32).reshape(-1)

    face_crop = parse_face(models.parser, aligned_bgr, models.device)
    emb_t = torch.from_numpy(emb.copy()).half().float()  # the published infer.py extracts faces in float16
    return FaceIdentity(
        id_embedding=emb_t,
        face_crop=face_crop,
        reference_image=rgb.copy() if whole_image else face_crop,
        keypoints=np.asarray(det.kps, np.float32).copy(),
        bbox=np.asarray(det.bbox, np.float32).copy(),
        detector=used.name,
        det_score=det.score,
        face_index=face_index,
        face_count=len(dets),
        aligned_face=cv2.cvtColor(aligned_bgr, cv2.COLOR_BGR2RGB),
        photo_embedding=emb_t,
        image=rgb,
    )


def mean_embedding(embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean of the embeddings, rescaled to the mean of their norms (float32 [512]).

    ArcFace directions carry the identity and raw norms sit in a typical range;
    a plain mean of N directions is shorter than any of them, so the mean's
    direction is kept and its length set to the average input length.
    """
    stack = torch.stack([e.reshape(-1).float() for e in embeddings])
    mean = stack.mean(dim=0)
    norm = mean.norm()
    if not torch.isfinite(norm) or norm <= 0:
        raise FaceError("the face embeddings of the batch cancel out; use photos of one person")
    return mean / norm * stack.norm(dim=1).mean()


def _as_list(images) -> list:
    if isinstance(images, (list, tuple)):
        return list(images)
    if hasattr(images, "detach") or isinstance(images, np.ndarray):
        if images.ndim == 4:
            return [images[i] for i in range(images.shape[0])]
        if images.ndim in (2, 3):
            return [images]
    raise FaceError(f"images: got {type(images).__name__}, needs a list of HxWx3 images or an [N,H,W,3] batch")


def extract_identities(
    models,
    images,
    face_index: int = 0,
    whole_image: bool = False,
    average_embeddings: bool = False,
    detector: Optional[FaceDetector] = None,
    fallback_detector: Optional[FaceDetector] = None,
    on_photo: Optional[Callable[[int, int], None]] = None,
) -> list[FaceIdentity]:
    """Several photos (list of HxWx3, or [N,H,W,3]) -> one FaceIdentity per photo, in order.

    on_photo(done, total) is called before the first photo (done = 0) and after each one: a progress bar, or a
    cancel check that raises.

    average_embeddings=True: every returned identity's id_embedding is the
    batch average (see `mean_embedding`: mean, then rescaled to the mean
    input norm); each keeps its own in photo_embedding. A photo that fails
    raises its error with "image i of N" in front.
    """
    items = _as_list(images)
    if not items:
        raise FaceError("image batch is empty; connect at least one photo with a face")
    out = []
    for i, img in enumerate(items):
        if on_photo is not None:
            on_photo(i, len(items))
        try:
            out.append(extract_identity(models, img, face_index, whole_image, detector, fallback_detector))
        except FaceError as e:
            if len(items) == 1:
                raise
            raise type(e)(f"image {i + 1} of {len(items)}: {e}") from e
    if on_photo is not None:
        on_photo(len(items), len(items))
    if average_embeddings and len(out) > 1:
        avg = _average(out)
        out = [replace(ident, id_embedding=avg.clone()) for ident in out]
    return out


def _average(identities: list[FaceIdentity]) -> torch.Tensor:
    """The batch's mean embedding, float16-rounded like each photo's own (see FaceIdentity.id_embedding)."""
    return mean_embedding([ident.photo_embedding for ident in identities]).half().float()
