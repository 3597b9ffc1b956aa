#!/usr/bin/env python3
"""Write tiny random stand-ins for every model the tiny twin workflows (tests/workflows/) load.

  python tests/make_tiny_models.py MODELS_DIR [--input-dir DIR]

MODELS_DIR gets ComfyUI's folder layout:
  diffusion_models/echo_tiny.safetensors      EchoVideo DiT (config in the metadata)
  vae/vae_tiny.safetensors                    CogVideoX VAE
  clip_vision/siglip_tiny.safetensors         SigLIP vision tower
  text_encoders/t5_tiny.safetensors           T5 v1.1 encoder (vocab 32128)
  text_encoders/t5_tiny_tokenizer/            T5-style tokenizer (AutoTokenizer), for CLI demos
  upscale_models/upscale_tiny_2x.safetensors  RealESRGAN-Compact 2x (spandrel loads it)
  insightface/models/antelopev2/*, facexlib/*  face models (tests/face_fixtures.py)
  extra_model_paths.yaml                      for ComfyUI's --extra-model-paths-config
and the input dir (default MODELS_DIR/../input) gets echovideo_example_photo.png.
Needs torch, transformers, safetensors, onnx; not pytest or ComfyUI. Takes seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
for _p in (REPO, TESTS):
    if _p not in sys.path:
        sys.path.insert(0, _p)

TINY = dict(text_dim=16, width=64, height=64, frames=9, steps=2)
PHOTO = "echovideo_example_photo.png"
NAMES = dict(model="echo_tiny.safetensors", vae="vae_tiny.safetensors", siglip="siglip_tiny.safetensors",
             t5="t5_tiny.safetensors", tokenizer="t5_tiny_tokenizer", upscale="upscale_tiny_2x.safetensors")
YAML_KEYS = ("diffusion_models", "vae", "clip_vision", "text_encoders", "upscale_models", "insightface", "facexlib")
WORDS = ("a man woman person smiles walks talks looks at the camera in park street city room beach "
         "with and of on is sunny day night light wearing shirt dress").split()


def write_tokenizer(folder: str) -> str:
    """WordLevel tokenizer with T5's special ids (pad 0, eos 1, unk 2), EOS appended; AutoTokenizer loads it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(dict.fromkeys(WORDS))}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)
    fast.save_pretrained(folder)
    return folder


def write_diffusers_folder(state, config, folder):
    """Two bf16 shards + index + config.json, as the released transformer/ folder."""
    import torch
    from safetensors.torch import save_file

    os.makedirs(folder)
    keys = sorted(state)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    weight_map = {}
    for name, ks in shards.items():
        save_file({k: state[k].to(torch.bfloat16).contiguous() for k in ks}, os.path.join(folder, name))
        weight_map.update({k: name for k in ks})
    with open(os.path.join(folder, "diffusion_pytorch_model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"_class_name": "EchoVideoLDM", "_diffusers_version": "0.31.0", **config}, f)


def write_tiny_upscaler(path: str, scale: int = 2, feat: int = 8, convs: int = 2) -> str:
    """SRVGGNetCompact state dict (body.N conv/PReLU + pixel shuffle), the layout spandrel detects."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(3)
    layers = [torch.nn.Conv2d(3, feat, 3, padding=1), torch.nn.PReLU(feat)]
    for _ in range(convs):
        layers += [torch.nn.Conv2d(feat, feat, 3, padding=1), torch.nn.PReLU(feat)]
    layers.append(torch.nn.Conv2d(feat, 3 * scale * scale, 3, padding=1))
    body = torch.nn.Sequential(*layers)
    with torch.no_grad():
        for m in body:
            if isinstance(m, torch.nn.Conv2d):
                m.weight.mul_(0.1)
    save_file({f"body.{k}": v.contiguous() for k, v in body.state_dict().items()}, path)
    return path


def write_tiny_models(root) -> dict:
    """Tiny random models of every kind the nodes load, in ComfyUI's folder layout under `root`
    (file names in NAMES; face models from face_fixtures). Returns dict(root, preset, face)."""
    import torch
    import transformers
    from safetensors.torch import save_file

    from echovideo import tiny
    from echovideo.checkpoint import save_single_file
    from face_fixtures import write_tiny_face_models

    root = os.fspath(root)
    p = tiny.Preset(2, 2, 16, 4, TINY["text_dim"], 226, TINY["frames"], TINY["height"], TINY["width"],
                    TINY["steps"], 6.0)
    for d in ("diffusion_models", "vae", "clip_vision", "text_encoders", "upscale_models"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    save_single_file(tiny.tiny_dit(p), tiny.dit_config(p), os.path.join(root, "diffusion_models", NAMES["model"]))
    vae = tiny.tiny_vae(p)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, os.path.join(root, "vae", NAMES["vae"]),
              metadata={"config": json.dumps(tiny.vae_config(p))})
    sig = tiny.tiny_siglip(p)
    save_file({(k if k.startswith("vision_model.") else "vision_model." + k): v.contiguous()
               for k, v in sig.state_dict().items()},
              os.path.join(root, "clip_vision", NAMES["siglip"]),
              metadata={"config": json.dumps(tiny.siglip_config(p))})
    torch.manual_seed(0)
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=32128, d_model=TINY["text_dim"], d_kv=4, d_ff=32, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)).eval()
    save_file({k: v.contiguous() for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"},
              os.path.join(root, "text_encoders", NAMES["t5"]),
              metadata={"config": json.dumps(t5.config.to_dict())})
    write_tokenizer(os.path.join(root, "text_encoders", NAMES["tokenizer"]))
    write_tiny_upscaler(os.path.join(root, "upscale_models", NAMES["upscale"]))
    face = write_tiny_face_models(root)
    return dict(root=root, preset=p, face=face)


def write_example_photo(input_dir) -> str:
    """skimage's astronaut (a real face) when scikit-image is installed, else a synthetic 512x512 image."""
    import numpy as np
    from PIL import Image

    os.makedirs(input_dir, exist_ok=True)
    try:
        from skimage import data

        img = data.astronaut()
    except Exception:  # no scikit-image: bright gradient with a face-like disc (the tiny detector needs light)
        yy, xx = np.mgrid[0:512, 0:512]
        img = np.stack([xx / 2, yy / 2, np.full_like(xx, 160)], -1).astype(np.uint8)
        disc = (xx - 256) ** 2 + (yy - 220) ** 2 < 110 ** 2
        img[disc] = (224, 180, 150)
    path = os.path.join(input_dir, PHOTO)
    Image.fromarray(img).save(path)
    return path


def write_extra_yaml(root) -> str:
    root = os.path.abspath(os.fspath(root))
    lines = ["echovideo_tiny:", f"    base_path: {root}"] + [f"    {k}: {k}" for k in YAML_KEYS]
    path = os.path.join(root, "extra_model_paths.yaml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models_dir")
    ap.add_argument("--input-dir", default=None, help="where the example photo goes (default MODELS_DIR/../input)")
    a = ap.parse_args(argv)
    root = os.path.abspath(a.models_dir)
    write_tiny_models(root)
    photo = write_example_photo(a.input_dir or os.path.join(os.path.dirname(root), "input"))
    yaml_path = write_extra_yaml(root)
    print(f"tiny models: {root}\nexample photo: {photo}\nextra model paths: {yaml_path}")
    with open(yaml_path) as f:
        print(f.read(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
