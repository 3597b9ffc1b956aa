#!/usr/bin/env bash
# Sets up .venv, writes tiny random models in ComfyUI's folder layout, and generates a tiny video on the CPU
# through the real loading code: face pipeline, T5, SigLIP, IITF, sampler, VAE decode -> output/echovideo_tiny.mp4
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh --test
.venv/bin/python tests/make_tiny_models.py output/tiny_models --input-dir output/tiny_input
.venv/bin/python -m echovideo.cli --models-dir output/tiny_models \
  --image output/tiny_input/echovideo_example_photo.png --prompt "a person smiles and waves in a sunny park" \
  --dit echo_tiny.safetensors --vae vae_tiny.safetensors --siglip siglip_tiny.safetensors \
  --t5 t5_tiny.safetensors --tokenizer output/tiny_models/text_encoders/t5_tiny_tokenizer \
  --width 64 --height 64 --frames 9 --steps 4 --device cpu --out output/echovideo_tiny.mp4
