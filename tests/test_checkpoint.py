"""Loading the DiT from a diffusers folder or one safetensors, in every stored dtype, and clear errors."""
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from echovideo import checkpoint
from echovideo.errors import CheckpointError
from golden import DEFAULT_GOLDEN, Golden, level1_output


@pytest.fixture(scope="module")
def golden():
    return Golden(DEFAULT_GOLDEN)


def rel_error(out, ref):
    return ((out.float() - ref).abs().max() / ref.abs().max()).item()


def write_diffusers_folder(state, config, folder):
    """Two shards + index + config.json, as the released transformer/ folder."""
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


def test_sharded_diffusers_folder_loads_and_matches(golden, tmp_path):
    folder = tmp_path / "transformer"
    write_diffusers_folder(golden.weights("transformer"), golden.meta["transformer_config"], str(folder))
    model = checkpoint.load_transformer(str(folder), compute_dtype=torch.float32)
    assert model.weight_dtype == torch.bfloat16
    assert rel_error(level1_output(model, golden), golden["transformer.out.model_output"]) < 0.02


@pytest.mark.parametrize("dtype,bound", [
    (torch.float32, 1e-5), (torch.bfloat16, 0.02), (torch.float16, 0.005),
    (torch.float8_e4m3fn, 0.1), (torch.float8_e5m2, 0.25)])
def test_single_file_each_stored_dtype(golden, tmp_path, dtype, bound):
    """fp32 storage reproduces the reference; lower precision stays within the stated bound
    (max error relative to the output's scale, fp32 compute)."""
    path = str(tmp_path / "echovideo.safetensors")
    checkpoint.save_single_file(golden.weights("transformer"), golden.meta["transformer_config"], path, dtype)
    model = checkpoint.load_transformer(path, compute_dtype=torch.float32)
    assert model.patch_embed.proj.weight.dtype == dtype
    err = rel_error(level1_output(model, golden), golden["transformer.out.model_output"])
    print(f"stored {dtype}: max error / scale {err:.2e}")
    assert err < bound


def test_fp8_conversion_at_load(golden, tmp_path):
    path = str(tmp_path / "echovideo.safetensors")
    checkpoint.save_single_file(golden.weights("transformer"), golden.meta["transformer_config"], path)
    model = checkpoint.load_transformer(path, weight_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    assert model.transformer_blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
    assert rel_error(level1_output(model, golden), golden["transformer.out.model_output"]) < 0.1


def test_plain_cogvideox_checkpoint_is_named(golden, tmp_path):
    state = {k: v for k, v in golden.weights("transformer").items()
             if not k.startswith(("face_proj", "text_proj", "face_info_proj", "face_prj_wofc"))}
    path = str(tmp_path / "cogvideox.safetensors")
    checkpoint.save_single_file(state, golden.meta["transformer_config"], path)
    with pytest.raises(CheckpointError, match="first missing: face_proj.weight.*plain CogVideoX-5B"):
        checkpoint.load_transformer(path)


def test_unexpected_keys_are_named(golden, tmp_path):
    state = dict(golden.weights("transformer"))
    state["extra.weight"] = torch.zeros(2)
    path = str(tmp_path / "extra.safetensors")
    checkpoint.save_single_file(state, golden.meta["transformer_config"], path)
    with pytest.raises(CheckpointError, match="first unexpected: extra.weight"):
        checkpoint.load_transformer(path)


def test_in_channels_16_is_named(golden, tmp_path):
    state = dict(golden.weights("transformer"))
    w = state["patch_embed.proj.weight"]
    state["patch_embed.proj.weight"] = w[:, : w.shape[1] // 2].contiguous()
    path = str(tmp_path / "t2v.safetensors")
    checkpoint.save_single_file(state, golden.meta["transformer_config"], path)
    with pytest.raises(CheckpointError, match="in_channels is 4 instead of 8"):
        checkpoint.load_transformer(path)


def test_pickle_files_are_refused(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="safetensors only|no pickle"):
        checkpoint.load_transformer(str(path))


def test_missing_shard_is_named(golden, tmp_path):
    folder = tmp_path / "transformer"
    write_diffusers_folder(golden.weights("transformer"), golden.meta["transformer_config"], str(folder))
    os.remove(folder / "diffusion_pytorch_model-00002-of-00002.safetensors")
    with pytest.raises(CheckpointError, match="00002-of-00002.safetensors, which is not in the folder"):
        checkpoint.load_transformer(str(folder))
