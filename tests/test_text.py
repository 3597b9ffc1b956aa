"""echovideo.text: reference T5 path on tiny random weights (no ComfyUI needed)."""
import json
import os
import re

import pytest
import torch

from echovideo import text
from echovideo.errors import CheckpointError

import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

WORDS = "a the man woman smiles walks in park red hat looking at camera slowly".split()


def tiny_config(vocab_size=64):
    return transformers.T5Config(vocab_size=vocab_size, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
                                 relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                 feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)


def make_tokenizer(folder):
    """A WordLevel tokenizer with T5's special ids (pad 0, eos 1, unk 2) and EOS appended."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_t5(tmp_path):
    torch.manual_seed(0)
    model = transformers.T5EncoderModel(tiny_config()).eval()
    folder = tmp_path / "t5"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(model.config.to_dict()))
    sd = {k: v.contiguous() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    keys = sorted(sd)
    half = len(keys) // 2  # two shards
    save_file({k: sd[k] for k in keys[:half]}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({k: sd[k] for k in keys[half:]}, str(folder / "model-00002-of-00002.safetensors"))
    tok_dir = make_tokenizer(str(tmp_path / "tokenizer"))
    return model, str(folder), tok_dir


def reference(model, tokenizer, prompt):
    ids = tokenizer([prompt], padding="max_length", max_length=226, truncation=True, add_special_tokens=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids)[0]


def test_tokenize_matches_reference_settings(tiny_t5):
    _, _, tok_dir = tiny_t5
    tok = text.load_tokenizer(tok_dir)
    ids = text.tokenize(tok, "a man smiles")
    assert ids.shape == (1, 226)
    assert ids[0, :4].tolist() == [3, 5, 7, 1]  # words then EOS
    assert (ids[0, 4:] == 0).all()
    long_ids = text.tokenize(tok, " ".join(["man"] * 400))
    assert long_ids.shape == (1, 226) and long_ids[0, -1].item() == 1  # truncated, EOS kept


def test_long_prompt_warns_with_the_dropped_words(tiny_t5, caplog):
    _, _, tok_dir = tiny_t5
    tok = text.load_tokenizer(tok_dir)
    fits = " ".join(["man"] * 225)  # 225 words + EOS = 226 tokens: nothing lost
    with caplog.at_level("WARNING", logger="echovideo"):
        text.tokenize(tok, fits)
    assert not caplog.records
    with caplog.at_level("WARNING"):  # every logger: transformers' own over-length notice would show too
        ids = text.tokenize(tok, fits + " woman smiles" + " man" * 400)
    assert ids.shape == (1, 226)
    (record,) = caplog.records
    assert "longer than the 226 tokens" in record.getMessage()
    dropped = "woman smiles" + " man" * 400  # 1612 characters: its start and how much more
    assert f"left out: {dropped[:200]!r} and {len(dropped) - 200} more characters. Shorten" in record.getMessage()
    caplog.clear()
    with caplog.at_level("WARNING"):
        text.tokenize(tok, fits + " woman smiles")
    assert "left out: 'woman smiles'. Shorten" in caplog.records[0].getMessage()


def test_characters_outside_the_vocabulary_are_named_in_the_log(tiny_t5, caplog):
    """What the tokenizer reads as its unknown token (T5 has no CJK or emoji) is named in the prompt's own
    characters, neighbours joined; a prompt it fully reads logs nothing."""
    _, _, tok_dir = tiny_t5
    tok = text.load_tokenizer(tok_dir)
    assert text.unknown_parts(tok, "a man smiles") == []
    prompt = "a man 一个 女人 smiles 🙂"
    assert text.unknown_parts(tok, prompt) == ["一个 女人", "🙂"]
    ids = text.tokenize(tok, prompt)
    assert (ids[0, :6] == tok.unk_token_id).sum() == 3
    caplog.clear()
    with caplog.at_level("WARNING", logger="echovideo"):
        text.tokenize(tok, "a man smiles")
        assert not caplog.records
        text.tokenize(tok, prompt)
    (record,) = caplog.records
    assert record.getMessage() == ("EchoVideo: T5's vocabulary has no '一个 女人', '🙂', so the model does not "
                                   "read them; write prompts in English.")
    caplog.clear()
    with caplog.at_level("WARNING", logger="echovideo"):
        text.tokenize(tok, "a man smiles naïve")  # a Latin letter the vocabulary lacks: no advice to switch language
    assert caplog.records[0].getMessage() == ("EchoVideo: T5's vocabulary has no 'naïve', so the model does not "
                                              "read them.")


def test_folder_encoder_equals_transformers(tiny_t5):
    model, folder, tok_dir = tiny_t5
    enc = text.load_t5_encoder(folder, dtype=torch.float32, device="cpu")
    tok = text.load_tokenizer(tok_dir)
    got = text.encode_prompt(enc, tok, "a woman walks in the park")
    want = reference(model, tok, "a woman walks in the park")
    assert got.shape == (1, 226, 16)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_single_file_with_config_metadata(tiny_t5, tmp_path):
    model, _, tok_dir = tiny_t5
    path = tmp_path / "t5_single.safetensors"
    sd = {k: v.contiguous() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    save_file(sd, str(path), metadata={"config": json.dumps(model.config.to_dict())})
    enc = text.load_t5_encoder(str(path), dtype=torch.float32)
    tok = text.load_tokenizer(tok_dir)
    torch.testing.assert_close(text.encode_prompt(enc, tok, "red hat"), reference(model, tok, "red hat"))


def test_bf16_load(tiny_t5):
    model, folder, tok_dir = tiny_t5
    enc = text.load_t5_encoder(folder, dtype=torch.bfloat16)
    tok = text.load_tokenizer(tok_dir)
    out = text.encode_prompt(enc, tok, "a man")
    assert out.dtype == torch.bfloat16 and out.shape == (1, 226, 16)
    want = reference(model, tok, "a man")
    err = ((out.float() - want).abs().max() / want.abs().max()).item()
    print(f"bf16 T5: max error / scale {err:.4f}")
    assert err < 0.05  # bf16 rounding through the layers; a model that ignored its weights is ~100% off


def test_fp16_load_keeps_wo_in_fp32(tiny_t5):
    """fp16 T5-XXL overflows in the feed-forward output projection; like transformers' from_pretrained the
    loader keeps `wo` in fp32, and the result stays close to the fp32 encoder's."""
    model, folder, tok_dir = tiny_t5
    enc = text.load_t5_encoder(folder, dtype=torch.float16)
    wo = [n for n, p in enc.named_parameters() if ".wo." in n]
    assert wo and all(p.dtype == torch.float32 for n, p in enc.named_parameters() if ".wo." in n)
    assert all(p.dtype == torch.float16 for n, p in enc.named_parameters() if ".wo." not in n)
    source = model.state_dict()
    assert all(torch.equal(p, source[n]) for n, p in enc.named_parameters() if ".wo." in n)  # never fp16-rounded
    tok = text.load_tokenizer(tok_dir)
    out = text.encode_prompt(enc, tok, "a man")
    torch.testing.assert_close(out.float(), reference(model, tok, "a man"), rtol=2e-2, atol=2e-2)


def test_clear_errors(tmp_path, tiny_t5):
    with pytest.raises(FileNotFoundError):
        text.load_t5_encoder(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        text.load_t5_encoder(str(tmp_path / "empty"))
    bare = tmp_path / "bare.safetensors"
    save_file({"x": torch.zeros(1)}, str(bare))
    with pytest.raises(CheckpointError, match="config"):
        text.load_t5_encoder(str(bare))
    wrong = tmp_path / "wrong.safetensors"
    save_file({"x": torch.zeros(1)}, str(wrong), metadata={"config": json.dumps(tiny_config().to_dict())})
    with pytest.raises(CheckpointError, match="missing"):
        text.load_t5_encoder(str(wrong))
    import shutil

    model, folder, _ = tiny_t5
    umt5 = tmp_path / "umt5"
    shutil.copytree(folder, umt5)
    (umt5 / "config.json").write_text(json.dumps(dict(tiny_config().to_dict(), model_type="umt5")))
    with pytest.raises(CheckpointError, match="model_type is 'umt5', needs 't5'"):
        text.load_t5_encoder(str(umt5))
    extra = tmp_path / "extra.safetensors"  # e.g. UMT5's per-layer position biases under a t5 config
    sd = {k: v.contiguous() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    sd["encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"] = torch.zeros(8, 4)
    save_file(sd, str(extra), metadata={"config": json.dumps(tiny_config().to_dict())})
    with pytest.raises(CheckpointError, match="1 weights this T5 does not have.*block.1.*relative_attention_bias"):
        text.load_t5_encoder(str(extra))
    pkl = tmp_path / "model.bin"
    pkl.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="pickle"):
        text.load_t5_encoder(str(pkl))
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        text.load_tokenizer(str(tmp_path / "empty"))


def test_another_model_in_the_t5_loader_is_named_with_the_fix(tmp_path, monkeypatch):
    """A release's vae/ or transformer/ folder, or a DiT file, picked in the T5 loader: named with the fix, from the
    config and the files' headers, before any weight is read."""
    import safetensors

    vae = tmp_path / "vae"
    vae.mkdir()
    (vae / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLCogVideoX", "in_channels": 3}))
    save_file({"encoder.conv_in.conv.weight": torch.zeros(2, 3, 3, 3, 3)}, str(vae / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointError, match="holds a diffusers 'AutoencoderKLCogVideoX' model, not a T5 encoder; "
                                              "pick the T5 v1.1 XXL encoder"):
        text.load_t5_encoder(str(vae))
    opened = safetensors.safe_open

    class HeadersOnly:
        def __init__(self, *a, **k):
            self.f = opened(*a, **k)

        def __enter__(self):
            self.f.__enter__()
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def keys(self):
            return self.f.keys()

        def metadata(self):
            return self.f.metadata()

        def get_tensor(self, key):
            raise AssertionError(f"{key} read before the keys were checked")

    monkeypatch.setattr(safetensors, "safe_open", HeadersOnly)
    dit = tmp_path / "dit.safetensors"
    save_file({"patch_embed.proj.weight": torch.zeros(4, 8, 2, 2)}, str(dit),
              metadata={"config": json.dumps(tiny_config().to_dict())})
    with pytest.raises(CheckpointError, match=r"is not a T5 encoder checkpoint: \d+ weights missing.*; pick the T5 "
                                              r"v1.1 XXL encoder .*or load a t5xxl file with core Load CLIP"):
        text.load_t5_encoder(str(dit))


def test_find_tokenizer_beside(tmp_path):
    root = tmp_path / "CogVideoX"
    (root / "text_encoder").mkdir(parents=True)
    make_tokenizer(str(root / "tokenizer"))
    assert text.find_tokenizer_beside(str(root / "text_encoder")) == str(root / "tokenizer")
    assert text.find_tokenizer_beside(str(root / "text_encoder") + "/") == str(root / "tokenizer")  # tab-completed
    assert text.find_tokenizer_beside(str(tmp_path / "elsewhere.safetensors")) is None


def test_sentencepiece_tokenizer_folder(tmp_path):
    """A T5Tokenizer built from a sentencepiece model (the released tokenizer/ folder kind)."""
    import sentencepiece as spm
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))) * 20)
    prefix = str(tmp_path / "sp")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=prefix, vocab_size=30, model_type="unigram", hard_vocab_limit=False,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    tok = transformers.T5Tokenizer(vocab_file=prefix + ".model", extra_ids=0)
    folder = tmp_path / "tokenizer"
    tok.save_pretrained(str(folder))
    loaded = text.load_tokenizer(str(folder))
    ids = text.tokenize(loaded, "a man smiles")
    assert ids.shape == (1, 226)
    n = int((ids[0] != 0).sum())
    assert ids[0, n - 1].item() == 1 and (ids[0, n:] == 0).all()


def _single_file(path, state):
    save_file({k: v.clone().contiguous() for k, v in state.items()}, str(path),  # clone: no shared storage
              metadata={"config": json.dumps(tiny_config().to_dict())})
    return str(path)


def test_full_t5_checkpoint_decoder_and_lm_head_are_skipped(tiny_t5, tmp_path):
    """A full T5 file (encoder + decoder + lm_head, as T5ForConditionalGeneration saves) loads as the encoder."""
    model, _, tok_dir = tiny_t5
    enc_sd = {k: v for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    full = transformers.T5ForConditionalGeneration(transformers.T5Config(**dict(
        tiny_config().to_dict(), is_encoder_decoder=True)))
    extra = {k: v for k, v in full.state_dict().items() if k.startswith(("decoder.", "lm_head."))}
    assert any(k.startswith("lm_head.") for k in extra) and any(k.startswith("decoder.") for k in extra)
    enc_only = text.load_t5_encoder(_single_file(tmp_path / "enc.safetensors", enc_sd), dtype=torch.float32)
    enc_full = text.load_t5_encoder(_single_file(tmp_path / "full.safetensors", {**enc_sd, **extra}),
                                    dtype=torch.float32)
    assert not any(n.startswith(("decoder.", "lm_head.")) for n, _ in enc_full.named_parameters())
    tok = text.load_tokenizer(tok_dir)
    got = text.encode_prompt(enc_full, tok, "a man smiles")
    torch.testing.assert_close(got, text.encode_prompt(enc_only, tok, "a man smiles"), rtol=0, atol=0)
    torch.testing.assert_close(got, reference(model, tok, "a man smiles"))


def test_embed_tokens_without_shared_weight(tiny_t5, tmp_path):
    """A file holding only encoder.embed_tokens.weight (no shared.weight) uses it as the shared embedding."""
    model, _, tok_dir = tiny_t5
    sd = {k: v for k, v in model.state_dict().items() if k != "shared.weight"}
    assert "encoder.embed_tokens.weight" in sd
    enc = text.load_t5_encoder(_single_file(tmp_path / "embed.safetensors", sd), dtype=torch.float32)
    assert torch.equal(enc.shared.weight, model.shared.weight)
    tok = text.load_tokenizer(tok_dir)
    torch.testing.assert_close(text.encode_prompt(enc, tok, "red hat"), reference(model, tok, "red hat"),
                               rtol=0, atol=0)


# ---- pinned by a mutation sweep

@pytest.mark.parametrize("prompt,kind", [(["a man", 5], "list"), ([None], "list"), (b"a man", "bytes"), (5, "int"),
                                         (None, "NoneType")])
def test_non_string_prompt_is_named(tiny_t5, prompt, kind):
    from echovideo.errors import EchoVideoInputError

    tok = text.load_tokenizer(tiny_t5[2])
    with pytest.raises(EchoVideoInputError, match=f"^prompt: got {kind}, needs a string or list of strings$"):
        text.tokenize(tok, prompt)


@pytest.mark.parametrize("ext", [".bin", ".pt", ".pth", ".ckpt"])
def test_pickle_t5_hints_safetensors(tmp_path, ext):
    folder = tmp_path / "t5"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    (folder / f"pytorch_model{ext}").write_bytes(b"x")
    with pytest.raises(CheckpointError) as info:
        text.load_t5_encoder(str(folder))
    assert str(info.value) == (f"T5 folder {str(folder)!r} has no .safetensors weights (found pytorch_model{ext}: "
                               "pickle files are not loaded; convert them to safetensors)")
    single = tmp_path / f"t5{ext}"
    single.write_bytes(b"x")
    with pytest.raises(CheckpointError) as info:
        text.load_t5_encoder(str(single))
    assert str(info.value) == f"{str(single)!r}: only safetensors files are loaded (no pickle)"


def test_sft_single_file_loads_like_safetensors(tiny_t5, tmp_path):
    model, _, tok_dir = tiny_t5
    sd = {k: v for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    enc_sft = text.load_t5_encoder(_single_file(tmp_path / "t5.sft", sd), dtype=torch.float32)
    enc_st = text.load_t5_encoder(_single_file(tmp_path / "t5.safetensors", sd), dtype=torch.float32)
    tok = text.load_tokenizer(tok_dir)
    got = text.encode_prompt(enc_sft, tok, "a man smiles")
    torch.testing.assert_close(got, text.encode_prompt(enc_st, tok, "a man smiles"), rtol=0, atol=0)
    torch.testing.assert_close(got, reference(model, tok, "a man smiles"))


def test_invalid_config_metadata_json_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"config": "{not json"})
    with pytest.raises(CheckpointError, match="metadata 'config' is not valid JSON") as info:
        text.load_t5_encoder(str(path))
    assert not isinstance(info.value, json.JSONDecodeError)
    assert str(info.value).startswith(f"{str(path)!r}: ")


# ---- the released text_encoder/ folder: two shards + model.safetensors.index.json

def _write_index(folder):
    from safetensors import safe_open

    weight_map = {}
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        with safe_open(os.path.join(folder, name), "pt") as f:
            weight_map.update({k: name for k in f.keys()})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


@pytest.mark.parametrize("index", [True, False])
def test_t5_missing_shard_is_named(tiny_t5, index):
    _, folder, _ = tiny_t5
    if index:
        _write_index(folder)
    os.remove(os.path.join(folder, "model-00002-of-00002.safetensors"))
    with pytest.raises(CheckpointError) as info:
        text.load_t5_encoder(folder)
    assert str(info.value) == (f"{folder}: the checkpoint needs model-00002-of-00002.safetensors, which is not in "
                               "the folder; download every shard of the T5 encoder into it")


def test_t5_index_decides_which_files_load(tiny_t5):
    """A stray .safetensors beside the indexed shards (an old download) is not loaded."""
    model, folder, tok_dir = tiny_t5
    _write_index(folder)
    save_file({"encoder.block.9.stray.weight": torch.zeros(2)}, os.path.join(folder, "old.safetensors"))
    enc = text.load_t5_encoder(folder, dtype=torch.float32)
    tok = text.load_tokenizer(tok_dir)
    torch.testing.assert_close(text.encode_prompt(enc, tok, "a man"), reference(model, tok, "a man"))


def test_t5_cut_shard_is_named(tiny_t5):
    _, folder, _ = tiny_t5
    _write_index(folder)
    shard = os.path.join(folder, "model-00001-of-00002.safetensors")
    data = open(shard, "rb").read()
    with open(shard, "wb") as f:
        f.write(data[:-500])
    with pytest.raises(CheckpointError, match=re.escape(f"{shard}: cannot be read (") +
                       r".*\); the file is incomplete or damaged: download it again$"):
        text.load_t5_encoder(folder)
