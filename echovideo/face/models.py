"""Face model files, loading and the load-once cache.

Nothing here downloads: every file comes from the folders the caller gives.
"""
from __future__ import annotations

import inspect
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional

from ..errors import FACE_PACKAGES, import_failure, require_packages
from .errors import FaceError, FaceModelLoadError, FaceModelMissingError

ANTELOPEV2 = os.path.join("models", "antelopev2")
DETECTOR_FILE = "scrfd_10g_bnkps.onnx"
RECOGNIZER_FILE = "glintr100.onnx"
RETINAFACE_FILE = "detection_Resnet50_Final.pth"
BISENET_FILE = "parsing_bisenet.pth"

_CACHE_SIZE = 2
_cache: "OrderedDict[tuple, FaceModels]" = OrderedDict()
_lock = threading.Lock()


@dataclass(frozen=True)
class FaceModelPaths:
    """Where the face model files are.

    insightface_root: the insightface models folder; files are read from
        <insightface_root>/models/antelopev2/{scrfd_10g_bnkps.onnx, glintr100.onnx}.
    facexlib_dir: folder holding detection_Resnet50_Final.pth and parsing_bisenet.pth.
    """

    insightface_root: str
    facexlib_dir: str

    @property
    def antelopev2_dir(self) -> str:
        return os.path.join(os.path.abspath(os.path.expanduser(self.insightface_root)), ANTELOPEV2)

    @property
    def facexlib_folder(self) -> str:
        return os.path.abspath(os.path.expanduser(self.facexlib_dir))

    @property
    def detector(self) -> str:
        return os.path.join(self.antelopev2_dir, DETECTOR_FILE)

    @property
    def recognizer(self) -> str:
        return os.path.join(self.antelopev2_dir, RECOGNIZER_FILE)

    @property
    def retinaface(self) -> str:
        return os.path.join(self.facexlib_folder, RETINAFACE_FILE)

    @property
    def bisenet(self) -> str:
        return os.path.join(self.facexlib_folder, BISENET_FILE)

    @property
    def files(self) -> list:
        return [self.detector, self.recognizer, self.retinaface, self.bisenet]

    def validate(self) -> "FaceModelPaths":
        """Raise FaceModelMissingError naming the first missing file and its folder."""
        needed = [
            (self.detector, "insightface antelopev2 face detector"),
            (self.recognizer, "insightface antelopev2 ArcFace recognizer"),
            (self.retinaface, "facexlib RetinaFace detector"),
            (self.bisenet, "facexlib BiSeNet face parser"),
        ]
        for path, what in needed:
            if not os.path.isfile(path):
                raise FaceModelMissingError(os.path.basename(path), os.path.dirname(path), what)
        return self


def onnx_providers(device: str = "cpu") -> list:
    """CUDAExecutionProvider (then CPU) when device is cuda and onnxruntime has it, else CPU."""
    import onnxruntime as ort

    dev = str(device)
    if dev.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        index = int(dev.split(":", 1)[1]) if ":" in dev else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _ort_session(path: str, providers: list):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=opts, providers=providers)


def _load_state_dict(path: str) -> dict:
    import torch

    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    return {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}


@dataclass(eq=False)
class FaceModels:
    """Loaded face models. Use load_face_models(); RetinaFace loads on first use."""

    paths: FaceModelPaths
    device: str
    providers: list
    detector: object  # insightface SCRFD
    recognizer: object  # insightface ArcFaceONNX
    parser: object  # facexlib BiSeNet (torch, eval, on device)
    _retinaface: object = field(default=None, repr=False)

    @property
    def retinaface(self):
        if self._retinaface is None:
            self._retinaface = _load_named(_build_retinaface, self.paths.retinaface, "facexlib RetinaFace detector",
                                           self.device)
        return self._retinaface


def _file_stamp(path: str) -> tuple:
    """A file replaced on disk is loaded again instead of served from the cache: a new inode, size or change
    time (ctime moves on every write or rename and, unlike mtime, cannot be set back by cp -p or rsync -t)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _load_named(build, path: str, what: str, *args):
    """build(path, *args); an unreadable file raises FaceModelLoadError naming the file and the fix."""
    try:
        return build(path, *args)
    except (FaceError, MemoryError):
        raise
    except ImportError as e:  # a package, not the file: "download it again" would not help
        raise import_failure(e, f"the {what}") from e
    except Exception as e:  # onnxruntime, torch.load and load_state_dict raise many unrelated types
        raise FaceModelLoadError(path, what, e) from e


def _build_retinaface(path: str, device: str):
    import torch
    from facexlib.detection.retinaface import RetinaFace

    import warnings

    with warnings.catch_warnings():  # facexlib passes torchvision's deprecated pretrained=False
        warnings.simplefilter("ignore", UserWarning)
        net = RetinaFace(network_name="resnet50", half=False, device=torch.device(device))
    net.load_state_dict(_load_state_dict(path), strict=True)
    return net.eval().to(device)


def _build_parser(path: str, device: str):
    from facexlib.parsing.bisenet import BiSeNet

    net = BiSeNet(num_class=19)
    net.load_state_dict(_load_state_dict(path), strict=True)
    return net.eval().to(device)


def _build_scrfd(path: str, providers: list):
    from insightface.model_zoo.scrfd import SCRFD

    kwargs = {}
    if "static_shape_sessions" in inspect.signature(SCRFD.__init__).parameters:
        kwargs["static_shape_sessions"] = False  # one dynamic session, as insightface 0.7
    det = SCRFD(model_file=path, session=_ort_session(path, providers), **kwargs)
    if not det.use_kps:
        from .errors import FaceError

        raise FaceError(f"{path}: this detector gives no keypoints; EchoVideo needs {DETECTOR_FILE}")
    from .detect import DET_SIZE, DET_THRESH

    det.prepare(0, input_size=DET_SIZE, det_thresh=DET_THRESH)
    return det


def _build_arcface(path: str, providers: list):
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    rec = ArcFaceONNX(model_file=path, session=_ort_session(path, providers))
    rec.prepare(0)
    return rec


def load_face_models(paths: FaceModelPaths, device: str = "cpu") -> FaceModels:
    """Load (once) the detector, recognizer and parser; cached by file paths + provider + device."""
    paths.validate()
    require_packages("the face pipeline (insightface antelopev2, facexlib)", *FACE_PACKAGES)
    device = str(device)
    providers = onnx_providers(device)
    key = tuple((f, _file_stamp(f)) for f in paths.files) + (repr(providers), device)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        models = FaceModels(
            paths=paths,
            device=device,
            providers=providers,
            detector=_load_named(_build_scrfd, paths.detector, "insightface antelopev2 face detector", providers),
            recognizer=_load_named(_build_arcface, paths.recognizer, "insightface antelopev2 ArcFace recognizer",
                                   providers),
            parser=_load_named(_build_parser, paths.bisenet, "facexlib BiSeNet face parser", device),
        )
        _cache[key] = models
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
        return models


def release_face_models(models: Optional[FaceModels] = None) -> None:
    """Drop every cached face model (ComfyUI's "unload models" calls this), or only `models`: a GPU set after
    use, so that it holds no VRAM while the DiT runs (the next use loads it again)."""
    with _lock:
        if models is None:
            _cache.clear()
        else:
            for key in [k for k, v in _cache.items() if v is models]:
                del _cache[key]
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - releasing must never fail
        pass


def cached_face_models() -> int:
    """How many model sets the cache holds."""
    return len(_cache)
