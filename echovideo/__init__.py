"""EchoVideo as a plain-torch library: CogVideoX-5B DiT + IITF identity fusion.

Importable without ComfyUI. Each paper concept has one home:
  config.py      transformer config (released defaults, validation)
  ops.py         layer namespaces (torch.nn, per-layer upcasting for fp8 storage), the CPU fused FF path
  attention.py   the one attention function and its backends
  rope.py        3D rotary embedding as the published pipeline builds it
  resampler.py   identity resampler (ArcFace embedding -> identity tokens)
  iitf.py        IITF: identity/text fusion into the DiT context
  transformer.py the DiT
  checkpoint.py  checkpoint loading (diffusers folder or single safetensors)
  siglip.py      SigLIP face tokens
  vae.py         face-frame latents and VAE decode
  guidance.py    dynamic classifier-free guidance
  sampling.py    the sampling loop
  preview.py     sampling previews (latent frame -> RGB without the VAE)
  face/          face pipeline (detect, align, parse, ArcFace)
"""
