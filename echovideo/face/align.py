"""5-point similarity alignment to the ArcFace template, as the published code."""
from __future__ import annotations

import cv2
import numpy as np

# ArcFace 5-point template in a 96x112 frame (left eye, right eye, nose, mouth left, mouth right).
ARCFACE_TEMPLATE_96x112 = np.array(
    [[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655], [62.7299, 92.2041]],
    dtype=np.float32,
)
FACE_SIZE = 512


def face_template(face_size: int = FACE_SIZE) -> np.ndarray:
    """Template scaled to face_size: x by face_size/96, y by face_size/112 (float32)."""
    t = ARCFACE_TEMPLATE_96x112.copy()
    t[:, 0] *= face_size / 96
    t[:, 1] *= face_size / 112
    return t


def alignment_matrix(keypoints: np.ndarray, face_size: int = FACE_SIZE) -> np.ndarray:
    """2x3 similarity matrix from keypoints [5,2] to the template (cv2 LMEDS)."""
    kps = np.asarray(keypoints, dtype=np.float32).reshape(5, 2)
    matrix = cv2.estimateAffinePartial2D(kps, face_template(face_size), method=cv2.LMEDS)[0]
    if matrix is None:
        from .errors import FaceError

        raise FaceError("the face keypoints are degenerate (all in one spot); use a clearer photo of the face")
    return matrix


def align_face(image: np.ndarray, keypoints: np.ndarray, face_size: int = FACE_SIZE):
    """Warp the face to face_size x face_size (INTER_LINEAR, black border).

    Returns (aligned image, 2x3 matrix). The channel order is kept (the
    published code aligns the BGR image).
    """
    matrix = alignment_matrix(keypoints, face_size)
    aligned = cv2.warpAffine(image, matrix, (face_size, face_size), flags=cv2.INTER_LINEAR)
    return aligned, matrix


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to points [N,2]."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return pts @ np.asarray(matrix, dtype=np.float64)[:, :2].T + np.asarray(matrix, dtype=np.float64)[:, 2]
