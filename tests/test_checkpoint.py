"""Loading the DiT from a diffusers folder or one safetensors, in every stored dtype, and clear errors."""
import json
import os
import re

import pytest
import torch
from safetensors.torch import save_file

from echovideo import checkpoint
from echovideo.errors import CheckpointError
from golden import Golden, assert_close_scaled, golden_params, level1_output
from make_tiny_models import write_diffusers_folder

IDENTITY_MODULES = ("face_proj", "text_proj", "face_info_proj", "face_prj_wofc")


@pytest.fixture(scope="module", params=golden_params())
def golden(request):
    """Every ECHOVIDEO_GOLDEN file: its weights, config and level-1 numbers."""
    return Golden(request.param)


def rel_error(out, ref):
    return ((out.float() - ref).abs().max() / ref.abs().max()).item()


def rel_rms_error(out, ref):
    """||out - ref|| / ||ref||: fp8's rounding noise, which unlike the largest element's error does not grow with
    the output's element count (fp8 weights round by up to 6% (e4m3fn) and 12.5% (e5m2) each)."""
    return ((out.float() - ref).norm() / ref.norm()).item()


@pytest.mark.golden
def test_sharded_diffusers_folder_loads_and_matches(golden, tmp_path):
    folder = tmp_path / "transformer"
    write_diffusers_folder(golden.weights("transformer"), golden.meta["transformer_config"], str(folder))
    model = checkpoint.load_transformer(str(folder), compute_dtype=torch.float32)
    assert model.weight_dtype == torch.bfloat16
    assert rel_error(level1_output(model, golden), golden["transformer.out.model_output"]) < 0.012  # bf16 storage


@pytest.mark.golden
@pytest.mark.parametrize("dtype,bound", [  # seen on 15 golden cases: bf16 3-6e-3, fp16 3.0-5.1e-4 (max error),
    (torch.float32, None), (torch.bfloat16, 0.012), (torch.float16, 0.002),  # e4m3fn 0.044-0.067, e5m2 0.110-0.172
    (torch.float8_e4m3fn, 0.1), (torch.float8_e5m2, 0.25)])  # (relative RMS error)
def test_single_file_each_stored_dtype(golden, tmp_path, dtype, bound):
    """fp32 storage reproduces the reference within test_golden's tolerance (rtol 1e-4, atol 1e-4 x scale);
    lower precision stays within the stated bound (fp32 compute): 16-bit storage the largest error relative to the
    output's scale, fp8 storage the relative RMS error (its largest element's error grows with the element count:
    0.12-0.21 for e5m2 on the same 15 cases)."""
    path = str(tmp_path / "echovideo.safetensors")
    checkpoint.save_single_file(golden.weights("transformer"), golden.meta["transformer_config"], path, dtype)
    model = checkpoint.load_transformer(path, compute_dtype=torch.float32)
    assert model.patch_embed.proj.weight.dtype == dtype
    out, ref = level1_output(model, golden), golden["transformer.out.model_output"]
    fp8 = dtype in (torch.float8_e4m3fn, torch.float8_e5m2)
    err = rel_rms_error(out, ref) if fp8 else rel_error(out, ref)
    print(f"{os.path.basename(golden.path)} stored {dtype}: {'RMS error / RMS' if fp8 else 'max error / scale'} "
          f"{err:.2e}")
    if bound is None:
        assert_close_scaled(out, ref, name=f"model_output, weights stored {dtype}")
    else:
        assert err < bound


@pytest.mark.golden
def test_fp8_conversion_at_load(golden, tmp_path):
    path = str(tmp_path / "echovideo.safetensors")
    checkpoint.save_single_file(golden.weights("transformer"), golden.meta["transformer_config"], path)
    model = checkpoint.load_transformer(path, weight_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    assert model.transformer_blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
    assert rel_rms_error(level1_output(model, golden), golden["transformer.out.model_output"]) < 0.1


def test_plain_cogvideox_checkpoint_is_named(golden, tmp_path):
    weights = golden.weights("transformer")
    removed = {k for k in weights if k.split(".")[0] in IDENTITY_MODULES}
    assert removed, "the golden file has no identity-module weights"
    state = {k: v for k, v in weights.items() if k not in removed}
    path = str(tmp_path / "cogvideox.safetensors")
    checkpoint.save_single_file(state, golden.meta["transformer_config"], path)
    with pytest.raises(CheckpointError, match=re.escape(f"{len(removed)} missing, 0 unexpected, 0 wrong-shape keys")
                       + r".*first missing: \S+.*plain CogVideoX-5B") as info:
        checkpoint.load_transformer(path)
    first = re.search(r"first missing: (\S+?)[;.]?(\s|$)", str(info.value)).group(1)
    assert first in removed, f"first missing key {first!r} is not one of the removed identity-module keys"


def test_unexpected_keys_are_named(golden, tmp_path):
    state = dict(golden.weights("transformer"))
    state["extra.weight"] = torch.zeros(2)
    path = str(tmp_path / "extra.safetensors")
    checkpoint.save_single_file(state, golden.meta["transformer_config"], path)
    with pytest.raises(CheckpointError, match="first unexpected: extra.weight"):
        checkpoint.load_transformer(path)


def test_text_to_video_in_channels_is_named(golden, tmp_path):
    """A text-to-video checkpoint (noise channels only, half of EchoVideo's in_channels) is named as such;
    the numbers come from the golden file's own config and weights."""
    cfg = golden.meta["transformer_config"]
    state = dict(golden.weights("transformer"))
    w = state["patch_embed.proj.weight"]
    assert w.shape[1] == cfg["in_channels"] == 2 * cfg["out_channels"], \
        f"patch_embed.proj.weight {tuple(w.shape)} vs in_channels {cfg['in_channels']}"
    t2v = w[:, : cfg["out_channels"]].contiguous()
    state["patch_embed.proj.weight"] = t2v
    path = str(tmp_path / "t2v.safetensors")
    checkpoint.save_single_file(state, cfg, path)
    expected = (f"0 missing, 0 unexpected, 1 wrong-shape keys; first wrong shape: patch_embed.proj.weight is "
                f"{tuple(t2v.shape)}, needs {tuple(w.shape)}")
    with pytest.raises(CheckpointError, match=re.escape(expected) + ".*" + re.escape(
            f"in_channels is {cfg['out_channels']} instead of {cfg['in_channels']}: a text-to-video")):
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


def test_sft_extension_loads_like_safetensors(tmp_path):
    """ComfyUI lists .sft files as safetensors; the loaders take them too."""
    from echovideo import tiny

    model = tiny.tiny_dit(tiny.PRESETS["shared"])
    path = str(tmp_path / "echo_tiny.sft")
    checkpoint.save_single_file(model, model.config, path)
    loaded = checkpoint.load_transformer(path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    pickle = tmp_path / "x.ckpt"
    pickle.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"\.safetensors \(or \.sft\) only"):
        checkpoint.single_file_config(str(pickle))


def test_folder_of_sft_shards_loads(tmp_path):
    """A diffusers folder whose shards are named .sft (no index) loads like .safetensors shards."""
    from echovideo import tiny

    model = tiny.tiny_dit(tiny.PRESETS["shared"])
    folder = tmp_path / "transformer"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(model.config.to_dict()))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    keys = sorted(state)
    save_file({k: state[k] for k in keys[: len(keys) // 2]}, str(folder / "part-1.sft"))
    save_file({k: state[k] for k in keys[len(keys) // 2:]}, str(folder / "part-2.sft"))
    loaded = checkpoint.load_transformer(str(folder))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


def test_mixed_dtype_file_loads_in_its_main_dtype(tmp_path):
    """An fp8 release that keeps norms and biases in bf16 stays fp8 by default (not silently all bf16), and its
    bf16 tensors stay bf16 (on the golden weights: 2.8% of scale at level 1 against 5.1% with them in fp8)."""
    from echovideo import tiny

    model = tiny.tiny_dit(tiny.PRESETS["shared"])
    state = {k: (v.to(torch.float8_e4m3fn) if v.dim() >= 2 else v.to(torch.bfloat16)).contiguous()
             for k, v in model.state_dict().items()}
    path = str(tmp_path / "mixed.safetensors")
    save_file(state, path, metadata={"config": json.dumps(model.config.to_dict()), "format": "pt"})
    loaded = checkpoint.load_transformer(path)
    assert loaded.weight_dtype == torch.float8_e4m3fn and loaded.compute_dtype == torch.bfloat16
    # the matrices stay fp8; the bf16 norms and biases are not rounded to fp8 on the way in
    loaded_state = loaded.state_dict()
    assert all(torch.equal(loaded_state[k].float(), v.float()) and loaded_state[k].dtype == v.dtype
               for k, v in state.items())
    c = loaded.config
    out = loaded(torch.randn(1, 2, c.in_channels, 8, 8), torch.randn(1, 16, c.text_embed_dim), torch.tensor([500.0]))
    assert torch.isfinite(out).all()
    # asking for the file's own fp8 keeps them too; another dtype converts every tensor
    same = checkpoint.load_transformer(path, weight_dtype=torch.float8_e4m3fn)
    assert {k: v.dtype for k, v in same.state_dict().items()} == {k: v.dtype for k, v in state.items()}
    other = checkpoint.load_transformer(path, weight_dtype=torch.float8_e5m2)
    assert all(p.dtype == torch.float8_e5m2 for p in other.parameters())
    assert checkpoint.main_stored_dtype({"a": ((10, 10), torch.bfloat16), "b": ((3,), torch.float32)}) == torch.bfloat16


@pytest.mark.parametrize("prefix", checkpoint.KEY_PREFIXES)
def test_prefixed_keys_load(tmp_path, prefix):
    """Files saved by ComfyUI (model.diffusion_model.) or other tools keep a prefix on every key."""
    from echovideo import tiny

    model = tiny.tiny_dit(tiny.PRESETS["shared"])
    state = {prefix + k: v.contiguous() for k, v in model.state_dict().items()}
    path = str(tmp_path / "prefixed.safetensors")
    save_file(state, path, metadata={"config": json.dumps(model.config.to_dict()), "format": "pt"})
    loaded = checkpoint.load_transformer(path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


# ---- pinned by a mutation sweep (tiny models only: no golden file needed)

GENERIC_CAUSE = ("the file is not an EchoVideo transformer, or its config (safetensors metadata 'config' or "
                 "config.json) does not match its weights")


def _tiny_dit():
    from echovideo import tiny

    return tiny.tiny_dit(tiny.PRESETS["shared"])


def _save_state(state, config, path):
    save_file({k: v.contiguous() for k, v in state.items()}, str(path),
              metadata={"config": json.dumps(config.to_dict()), "format": "pt"})
    return str(path)


def test_partly_other_model_file_is_not_called_plain_cogvideox(tmp_path):
    """Identity modules missing AND other keys missing (a file that is partly another model's): the plain
    CogVideoX-5B diagnosis needs every missing key to be an identity-module key; this gets the generic cause."""
    model = _tiny_dit()
    keys = list(model.state_dict())
    kept = [k for k in keys if k.split(".")[0] not in IDENTITY_MODULES and not k.startswith("transformer_blocks.1.")]
    assert len(kept) < len(keys) - 1
    state = {k: model.state_dict()[k] for k in kept}
    state["encoder.block.0.layer.0.SelfAttention.q.weight"] = torch.zeros(4, 4)  # another model's key
    path = _save_state(state, model.config, tmp_path / "partly.safetensors")
    missing = [k for k in keys if k not in state]
    assert any(k.split(".")[0] in IDENTITY_MODULES for k in missing)  # some identity keys are missing too
    with pytest.raises(CheckpointError) as info:
        checkpoint.load_transformer(path)
    assert str(info.value) == (
        f"{path}: does not match the EchoVideo transformer: {len(missing)} missing, 1 unexpected, 0 wrong-shape "
        f"keys; first missing: {missing[0]}; first unexpected: encoder.block.0.layer.0.SelfAttention.q.weight. "
        f"Likely cause: {GENERIC_CAUSE}")
    assert "plain CogVideoX" not in str(info.value)


def test_generic_likely_cause_text(tmp_path):
    """Missing non-identity keys (no specific diagnosis): the message ends with the generic cause."""
    model = _tiny_dit()
    state = {k: v for k, v in model.state_dict().items() if k != "proj_out.weight"}
    assert len(state) == len(model.state_dict()) - 1
    path = _save_state(state, model.config, tmp_path / "generic.safetensors")
    with pytest.raises(CheckpointError) as info:
        checkpoint.load_transformer(path)
    assert str(info.value) == (
        f"{path}: does not match the EchoVideo transformer: 1 missing, 0 unexpected, 0 wrong-shape keys; "
        f"first missing: proj_out.weight. Likely cause: {GENERIC_CAUSE}")
    # and straight from diagnose: unexpected keys only
    expected = {"a.weight": (2,)}
    assert checkpoint.diagnose({"a.weight": (2,), "b": (1,)}, expected) == (
        f"0 missing, 1 unexpected, 0 wrong-shape keys; first unexpected: b. Likely cause: {GENERIC_CAUSE}")


@pytest.mark.parametrize("what", ["VAE", "SigLIP"])
def test_vae_and_siglip_folder_without_config_json(tmp_path, what):
    from echovideo import siglip, vae

    folder = tmp_path / what.lower()
    folder.mkdir()
    save_file({"x": torch.zeros(1)}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=re.escape(f"{what} folder {folder} has no config.json")):
        (vae.load_vae if what == "VAE" else siglip.load_siglip)(str(folder))
    with pytest.raises(CheckpointError, match=re.escape(f"{what} folder {folder} has no config.json")):
        checkpoint.read_config_and_weights(str(folder), what)


def test_fp16_weights_compute_in_fp16_by_default(tmp_path):
    """fp16-stored weights compute in fp16 by default (not bf16); an explicit compute_dtype still wins."""
    model = _tiny_dit()
    path = str(tmp_path / "fp16.safetensors")
    checkpoint.save_single_file(model, model.config, path, torch.float16)
    loaded = checkpoint.load_transformer(path)
    assert loaded.weight_dtype == torch.float16
    assert loaded.compute_dtype == torch.float16
    assert checkpoint.default_compute_dtype(torch.float16) == torch.float16
    assert checkpoint.load_transformer(path, compute_dtype=torch.float32).compute_dtype == torch.float32


def test_loaded_models_need_no_grad(tmp_path):
    model = _tiny_dit()
    path = str(tmp_path / "echo.safetensors")
    checkpoint.save_single_file(model, model.config, path)
    loaded = checkpoint.load_transformer(path)
    params = list(loaded.parameters())
    assert params and not any(p.requires_grad for p in params)
    assert not loaded.training


@pytest.mark.parametrize("metadata_config, vae_config, index, says", [
    ("{not json", '{"latent_channels": 4,', "{", ("is not valid JSON",) * 3),  # cut off
    ('"{}"', '[{"latent_channels": 4}]', '{"metadata": {}}',
     ("holds a JSON string, not the object", "holds a JSON array, not the object", ": has no 'weight_map' object")),
])
def test_broken_config_json_is_a_checkpoint_error(tmp_path, metadata_config, vae_config, index, says):
    """Bad JSON, or JSON that is not an object, in a single file's config metadata, a folder's config.json or its
    shard index names the file (a raw JSONDecodeError or AttributeError would not)."""
    from echovideo import vae

    model = _tiny_dit()
    path = str(tmp_path / "bad.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path, metadata={"config": metadata_config})
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: the 'config' metadata {says[0]}")):
        checkpoint.load_transformer(path)
    folder = tmp_path / "vae"
    folder.mkdir()
    (folder / "config.json").write_text(vae_config)
    save_file({"x": torch.zeros(1)}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=re.escape(f"{folder / 'config.json'} {says[1]}")):
        vae.load_vae(str(folder))
    dit_folder = tmp_path / "dit"
    dit_folder.mkdir()
    (dit_folder / "config.json").write_text(json.dumps(model.config.to_dict()))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(dit_folder / "diffusion_pytorch_model.safetensors"))
    (dit_folder / "diffusion_pytorch_model.safetensors.index.json").write_text(index)
    with pytest.raises(CheckpointError, match=re.escape(f"safetensors.index.json{'' if says[2][0] == ':' else ' '}"
                                                        f"{says[2]}")):
        checkpoint.load_transformer(str(dit_folder))


@pytest.mark.parametrize("key, named", [
    ("vision_model.embeddings.patch_embedding.weight", "a SigLIP/CLIP encoder's (vision_model keys)"),
    ("encoder.block.0.layer.0.SelfAttention.q.weight", "a T5 text encoder's (encoder.block keys)"),
    ("decoder.up_blocks.0.resnets.0.conv1.conv.weight", "a VAE's (encoder.down_blocks / decoder.up_blocks keys)"),
])
def test_another_models_file_without_config_is_named_by_its_keys(tmp_path, key, named):
    """A single file with no config metadata is read against the released layout; another model's keys say which
    model it is and which loader takes it, instead of the generic 'not an EchoVideo transformer'."""
    path = str(tmp_path / "other.safetensors")
    save_file({key: torch.zeros(2, 2)}, path)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load_transformer(path)
    message = str(info.value)
    assert f"the weights are {named}, not the EchoVideo transformer's: " in message
    assert "pick the EchoVideo transformer here" in message
    assert "the file is not an EchoVideo transformer" not in message


# ---- sharded folders: a missing, cut or lone shard is named with the fix

def _tiny_sharded_folder(tmp_path, index=True):
    """The tiny DiT as the released transformer/ folder (two shards, config.json; the index when `index`)."""
    model = _tiny_dit()
    folder = tmp_path / "transformer"
    write_diffusers_folder(model.state_dict(), model.config.to_dict(), str(folder))
    if not index:
        os.remove(folder / "diffusion_pytorch_model.safetensors.index.json")
    return folder


@pytest.mark.parametrize("index", [True, False])
def test_missing_shard_of_tiny_folder_is_named(tmp_path, index):
    """With or without the index, a shard that is not there is named (the -0000k-of-0000N names say how many)."""
    folder = _tiny_sharded_folder(tmp_path, index)
    os.remove(folder / "diffusion_pytorch_model-00002-of-00002.safetensors")
    with pytest.raises(CheckpointError) as info:
        checkpoint.load_transformer(str(folder))
    assert str(info.value) == (f"{folder}: the checkpoint needs diffusion_pytorch_model-00002-of-00002.safetensors, "
                               "which is not in the folder; download every shard of the transformer into it")


def _loads_like_the_model(folder):
    model = _tiny_dit()
    loaded = checkpoint.load_transformer(str(folder), weight_dtype=torch.bfloat16)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k].float(), v.to(torch.bfloat16).float()), k


def test_shard_names_keep_their_own_spelling(tmp_path):
    """Upper-case shard names (MODEL-00001-OF-00002.SAFETENSORS) are a complete pair, not a missing shard."""
    folder = _tiny_sharded_folder(tmp_path, index=False)
    for name in os.listdir(folder):
        if name.endswith(".safetensors"):
            os.rename(folder / name, folder / name.upper())
    _loads_like_the_model(folder)


def test_index_naming_other_extension_or_stale_index(tmp_path):
    """An index written for .safetensors beside .sft shards loads the .sft shards; an index none of whose files
    are there, beside a merged file, is stale and the merged file loads (both loaded before the index was read)."""
    folder = _tiny_sharded_folder(tmp_path)
    for name in os.listdir(folder):
        if name.endswith("-of-00002.safetensors"):
            os.rename(folder / name, folder / name.replace(".safetensors", ".sft"))
    _loads_like_the_model(folder)
    merged = tmp_path / "merged"
    merged.mkdir()
    model = _tiny_dit()
    from safetensors.torch import save_file
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()},
              str(merged / "diffusion_pytorch_model.safetensors"))
    for name in ("config.json", "diffusion_pytorch_model.safetensors.index.json"):
        (merged / name).write_bytes((folder / name).read_bytes())
    _loads_like_the_model(merged)


def test_missing_shard_named_once_beside_sft_shards_and_a_stray_file(tmp_path):
    """Shards kept as .sft under a .safetensors index: the missing one is named once, in the index's spelling; a
    stray file that does not hold the index's keys does not make the index stale (the shards are still named)."""
    folder = _tiny_sharded_folder(tmp_path)
    first, second = (f"diffusion_pytorch_model-0000{i}-of-00002" for i in (1, 2))
    os.rename(folder / f"{first}.safetensors", folder / f"{first}.sft")
    os.remove(folder / f"{second}.safetensors")
    needs = f"{folder}: the checkpoint needs {second}.safetensors, which is not in the folder"
    with pytest.raises(CheckpointError, match="^" + re.escape(needs) + "; download every shard"):
        checkpoint.load_transformer(str(folder))
    os.remove(folder / f"{first}.sft")
    from safetensors.torch import save_file
    save_file({"patch_embed.proj.weight": torch.zeros(1)}, str(folder / "notes.safetensors"))
    with pytest.raises(CheckpointError, match=re.escape(f"needs {first}.safetensors, {second}.safetensors, which "
                                                        "are not in the folder")):
        checkpoint.load_transformer(str(folder))


def test_cut_shard_is_named(tmp_path):
    """A shard cut short (an interrupted download) is named, not its folder, with the fix."""
    folder = _tiny_sharded_folder(tmp_path)
    shard = folder / "diffusion_pytorch_model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1000])
    for read in (checkpoint.read_header, checkpoint.load_transformer):
        with pytest.raises(CheckpointError, match=re.escape(f"{shard}: cannot be read (") +
                           r".*\); the file is incomplete or damaged: download it again$"):
            read(str(folder))


def test_one_shard_selected_is_named_as_a_shard(tmp_path):
    """One shard of the released folder, selected as a model: the error says so instead of the generic cause."""
    folder = _tiny_sharded_folder(tmp_path)
    shard = folder / "diffusion_pytorch_model-00001-of-00002.safetensors"
    with pytest.raises(CheckpointError) as info:
        checkpoint.load_transformer(str(shard))
    assert str(info.value).endswith(
        "Likely cause: diffusion_pytorch_model-00001-of-00002.safetensors is one shard of a 2-shard checkpoint: "
        "select the folder that holds every shard and its .index.json (download all 2 shards)")
    assert GENERIC_CAUSE not in str(info.value)


def test_index_decides_which_files_load(tmp_path):
    """A stray .safetensors beside the indexed shards is not loaded."""
    folder = _tiny_sharded_folder(tmp_path)
    save_file({"stray.weight": torch.zeros(2)}, str(folder / "leftover.safetensors"))
    assert "stray.weight" not in checkpoint.read_header(str(folder))[0]
    checkpoint.load_transformer(str(folder))


def test_scaled_fp8_file_is_named(tmp_path):
    """ComfyUI's scaled fp8 (a scale_weight per matrix and a scaled_fp8 marker key) is refused by name."""
    model = _tiny_dit()
    state = {k: v.to(torch.float8_e4m3fn) for k, v in model.state_dict().items()}
    state.update({k[: -len("weight")] + "scale_weight": torch.ones(()) for k, v in model.state_dict().items()
                  if k.endswith(".weight") and v.dim() == 2})
    state["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    path = _save_state(state, model.config, tmp_path / "scaled.safetensors")
    with pytest.raises(CheckpointError) as info:
        checkpoint.load_transformer(path)
    assert str(info.value).startswith(f"{path}: does not match the EchoVideo transformer")
    assert str(info.value).endswith(
        "Likely cause: a ComfyUI scaled-fp8 file (.scale_weight keys): this format is not supported; use a plain "
        "fp8 (e4m3fn) or bf16 EchoVideo transformer file")


def test_vae_folder_shard_cut_or_missing_is_named(tmp_path):
    """The VAE and SigLIP folders read their shards the same way: the index decides, a bad file is named."""
    folder = tmp_path / "vae"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    save_file({"a": torch.zeros(2)}, str(folder / "model-00001-of-00002.safetensors"))
    with pytest.raises(CheckpointError, match=re.escape("needs model-00002-of-00002.safetensors, which is not in "
                                                        "the folder; download every shard of the VAE into it")):
        checkpoint.read_config_and_weights(str(folder), "VAE")
    save_file({"b": torch.zeros(2)}, str(folder / "model-00002-of-00002.safetensors"))
    assert sorted(checkpoint.read_config_and_weights(str(folder), "VAE")[1]) == ["a", "b"]
    cut = folder / "model-00002-of-00002.safetensors"
    cut.write_bytes(cut.read_bytes()[:20])
    with pytest.raises(CheckpointError, match=re.escape(f"{cut}: cannot be read") + ".*download it again$"):
        checkpoint.read_config_and_weights(str(folder), "VAE")
