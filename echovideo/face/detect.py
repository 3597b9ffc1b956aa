"""Face detectors behind one small protocol, and the face ordering rules."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

DET_SIZE = (640, 640)  # published: FaceAnalysis.prepare(det_size=(640, 640))
DET_THRESH = 0.5  # insightface default
RETINAFACE_THRESH = 0.97  # facexlib FaceRestoreHelper.get_face_landmarks_5


@dataclass
class Detection:
    bbox: np.ndarray  # [4] x1, y1, x2, y2
    kps: np.ndarray  # [5,2]
    score: float

    @property
    def area(self) -> float:
        return float((self.bbox[2] - self.bbox[0]) * (self.bbox[3] - self.bbox[1]))


class FaceDetector(Protocol):
    """detect(image_bgr uint8 HxWx3) -> detections with 5 keypoints each."""

    name: str

    def detect(self, image_bgr: np.ndarray) -> list[Detection]: ...


def order_by_size(dets: Sequence[Detection]) -> list[Detection]:
    """Largest first. Ties keep the published choice: it sorts ascending and takes [-1]."""
    return list(reversed(sorted(dets, key=lambda d: d.area)))


def order_centre_first(dets: Sequence[Detection], height: int, width: int) -> list[Detection]:
    """The face nearest the image centre first (facexlib get_center_face), then the rest by size."""
    if not dets:
        return []
    centre = np.array([width / 2, height / 2])
    dist = [np.linalg.norm(np.array([(d.bbox[0] + d.bbox[2]) / 2, (d.bbox[1] + d.bbox[3]) / 2]) - centre) for d in dets]
    first = dist.index(min(dist))
    rest = [d for i, d in enumerate(dets) if i != first]
    return [dets[first]] + order_by_size(rest)


class InsightFaceDetector:
    """insightface SCRFD (antelopev2 scrfd_10g_bnkps) at det size 640, threshold 0.5."""

    name = "insightface"

    def __init__(self, scrfd):
        self.model = scrfd

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        bboxes, kpss = self.model.detect(image_bgr, max_num=0, metric="default")
        out = []
        for i in range(bboxes.shape[0]):
            if kpss is None:
                continue
            out.append(Detection(np.asarray(bboxes[i, :4], np.float32), np.asarray(kpss[i], np.float32), float(bboxes[i, 4])))
        return out


class RetinaFaceDetector:
    """facexlib RetinaFace-ResNet50 as FaceRestoreHelper.get_face_landmarks_5 runs it (BGR, threshold 0.97)."""

    name = "retinaface"

    def __init__(self, net, threshold: float = RETINAFACE_THRESH):
        self.net = net
        self.threshold = threshold

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        import torch

        with torch.no_grad():
            rows = self.net.detect_faces(image_bgr, self.threshold)
        return [
            Detection(np.asarray(r[0:4], np.float32), np.asarray(r[5:15], np.float32).reshape(5, 2), float(r[4]))
            for r in rows
        ]
