"""EchoVideo face pipeline: photo -> ArcFace embedding + parsed aligned face crop.

Plain Python (no ComfyUI). Follows the published EchoVideo face code
(insightface antelopev2 + facexlib RetinaFace/BiSeNet); model files come only
from the folders given in FaceModelPaths, nothing is downloaded.
"""
from .align import ARCFACE_TEMPLATE_96x112, FACE_SIZE, align_face, alignment_matrix, face_template, transform_points
from .detect import Detection, FaceDetector
from .errors import FaceError, FaceIndexError, FaceModelLoadError, FaceModelMissingError, NoFaceFoundError
from .image import MAX_LONG_SIDE, load_image_file, resize_long_side, to_uint8_rgb
from .models import (
    BISENET_FILE,
    DETECTOR_FILE,
    RECOGNIZER_FILE,
    RETINAFACE_FILE,
    FaceModelPaths,
    FaceModels,
    load_face_models,
    onnx_providers,
    release_face_models,
)
from .parse import BACKGROUND_LABELS, parse_face
from .pipeline import MIN_FACE_PIXELS, FaceIdentity, extract_identities, extract_identity, mean_embedding

__all__ = [
    "ARCFACE_TEMPLATE_96x112",
    "BACKGROUND_LABELS",
    "BISENET_FILE",
    "DETECTOR_FILE",
    "Detection",
    "FACE_SIZE",
    "FaceDetector",
    "FaceError",
    "FaceIdentity",
    "FaceIndexError",
    "FaceModelLoadError",
    "FaceModelMissingError",
    "FaceModelPaths",
    "FaceModels",
    "MAX_LONG_SIDE",
    "MIN_FACE_PIXELS",
    "NoFaceFoundError",
    "RECOGNIZER_FILE",
    "RETINAFACE_FILE",
    "align_face",
    "alignment_matrix",
    "extract_identities",
    "extract_identity",
    "face_template",
    "load_face_models",
    "load_image_file",
    "mean_embedding",
    "onnx_providers",
    "parse_face",
    "release_face_models",
    "resize_long_side",
    "to_uint8_rgb",
    "transform_points",
]
