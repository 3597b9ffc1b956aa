"""BiSeNet face parsing: keep the face, blacken background/hair/ears/neck/clothes."""
from __future__ import annotations

import cv2
import numpy as np

# BiSeNet labels blackened by the published code: background, cloth, hat, ears, earring, neck, necklace...
BACKGROUND_LABELS = (0, 16, 18, 7, 8, 9, 14, 15)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def parse_face(parser, aligned_bgr: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Aligned 512x512 BGR uint8 crop -> parsed face, uint8 RGB 512x512x3.

    As the published code: RGB/255, ImageNet-normalised input to BiSeNet,
    argmax of output[0]; labels in BACKGROUND_LABELS become black; then
    (x*255).astype(uint8) on the float32 RGB (truncation, kept on purpose).
    """
    import torch
    from torchvision.transforms.functional import normalize

    rgb = cv2.cvtColor(aligned_bgr, cv2.COLOR_BGR2RGB)
    x = torch.from_numpy(rgb.transpose(2, 0, 1)).float().unsqueeze(0) / 255.0
    x = x.to(device)
    dtype = next(parser.parameters()).dtype
    with torch.no_grad():
        out = parser(normalize(x, list(IMAGENET_MEAN), list(IMAGENET_STD)).to(dtype))[0]
    labels = out.argmax(dim=1, keepdim=True)
    bg = sum(labels == i for i in BACKGROUND_LABELS).bool()
    kept = torch.where(bg, torch.zeros_like(x), x)
    arr = kept.cpu().squeeze(0).permute(1, 2, 0).numpy() * 255
    return arr.astype(np.uint8)
