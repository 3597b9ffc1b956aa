"""Text nodes in a real ComfyUI (in-process): both encoder paths equal transformers' T5EncoderModel."""
import json
import re
import types

import pytest
import torch

import comfy_env

pytestmark = comfy_env.requires_comfyui
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

VOCAB = 32128  # the real T5 tokenizer's ids must fit
TINY = dict(d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4, vocab_size=VOCAB)
PROMPTS = ["A woman with red hair smiles and walks through a sunny park, camera slowly tracking.", ""]


@pytest.fixture(scope="module")
def hf_t5():
    torch.manual_seed(0)
    cfg = transformers.T5Config(**TINY, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                                feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
    return transformers.T5EncoderModel(cfg).eval()


@pytest.fixture(scope="module")
def comfy_tokenizer_dir():
    comfy_env.setup_comfy()
    bridge = comfy_env.pack_module("nodes.bridge")
    return bridge.comfy_t5_tokenizer_dir()


def reference(model, tok_dir, prompt):
    tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
    ids = tok([prompt], padding="max_length", max_length=226, truncation=True, add_special_tokens=True,
              return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids)[0]


def make_clip(hf_model, kind):
    """A core comfy.sd.CLIP holding ComfyUI's T5 class with a tiny config and the HF weights."""
    comfy_env.setup_comfy()
    import comfy.sd
    import comfy.text_encoders.genmo as genmo
    import comfy.text_encoders.sd3_clip as sd3

    overrides = {k: TINY[k] for k in ("d_model", "d_kv", "d_ff", "num_layers", "num_heads", "vocab_size")}
    if kind == "mochi":  # mochi enables attention masks in ComfyUI's own encode path
        target = types.SimpleNamespace(clip=genmo.mochi_te(), tokenizer=genmo.MochiT5Tokenizer, params={})
    else:
        target = types.SimpleNamespace(clip=sd3.sd3_clip(clip_l=False, clip_g=False, t5=True),
                                       tokenizer=sd3.SD3Tokenizer, params={})
    clip = comfy.sd.CLIP(target=target, model_options={"t5xxl_model_config": overrides, "dtype": torch.float32})
    sd = {k: v for k, v in hf_model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    missing, unexpected = clip.cond_stage_model.t5xxl.transformer.load_state_dict(sd, strict=False)
    assert not unexpected and not missing
    return clip


def test_comfy_tokenizer_is_reference_t5(comfy_tokenizer_dir):
    from echovideo import text

    tok = text.load_tokenizer(comfy_tokenizer_dir)
    ids = text.tokenize(tok, "a cat")
    assert ids.shape == (1, 226)
    assert ids[0, :4].tolist() == [3, 9, 1712, 1] and (ids[0, 4:] == 0).all()


@pytest.mark.parametrize("kind", ["sd3", "mochi"])
def test_clip_path_equals_transformers(hf_t5, comfy_tokenizer_dir, kind):
    tn = comfy_env.pack_module("nodes.text_nodes")
    clip = make_clip(hf_t5, kind)
    loads = []
    real_load = clip.load_model
    clip.load_model = lambda *a, **kw: (loads.append(1), real_load(*a, **kw))[1]  # ComfyUI places the T5
    (out,) = comfy_env.run_node(tn.TextEncode, positive=PROMPTS[0], negative=PROMPTS[1], clip=clip)
    assert len(loads) == 2  # asked before each prompt's encode (it may have been offloaded in between)
    assert out.positive.shape == (1, 226, 16) and out.negative.shape == (1, 226, 16)
    torch.testing.assert_close(out.positive, reference(hf_t5, comfy_tokenizer_dir, PROMPTS[0]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.negative, reference(hf_t5, comfy_tokenizer_dir, PROMPTS[1]), rtol=1e-4, atol=1e-5)


def test_t5_loader_path_equals_transformers(hf_t5, comfy_tokenizer_dir, tmp_path, monkeypatch):
    comfy_env.setup_comfy()
    import folder_paths

    te_dir = tmp_path / "text_encoders"
    model_dir = te_dir / "t5-tiny"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text(json.dumps(hf_t5.config.to_dict()))
    sd = {k: v.contiguous() for k, v in hf_t5.state_dict().items() if k != "encoder.embed_tokens.weight"}
    save_file(sd, str(model_dir / "model.safetensors"))
    save_file(sd, str(te_dir / "t5-single.safetensors"), metadata={"config": json.dumps(hf_t5.config.to_dict())})
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "text_encoders", ([str(te_dir)], {".safetensors"}))
    folder_paths.filename_list_cache.pop("text_encoders", None)

    tn = comfy_env.pack_module("nodes.text_nodes")
    assert {"t5-tiny", "t5-single.safetensors"} <= set(tn.t5_choices())
    for name in ("t5-tiny", "t5-single.safetensors"):
        (t5,) = comfy_env.run_node(tn.T5Loader, t5_name=name, precision="fp32")
        (out,) = comfy_env.run_node(tn.TextEncode, positive=PROMPTS[0], negative=PROMPTS[1], t5=t5)
        torch.testing.assert_close(out.positive, reference(hf_t5, comfy_tokenizer_dir, PROMPTS[0]), rtol=0, atol=0)
        torch.testing.assert_close(out.negative, reference(hf_t5, comfy_tokenizer_dir, PROMPTS[1]), rtol=0, atol=0)

    # precision "default" follows ComfyUI's text-encoder dtype rule; the weights wait on the text offload device
    from echovideo import text

    bridge = comfy_env.pack_module("nodes.bridge")
    offload_marker, seen = torch.device("cpu", 7), {}
    real_loader, real_offload = text.load_t5_encoder, bridge.offload_device

    def spy_loader(path, dtype, device):
        seen.update(dtype=dtype, device=device)
        return real_loader(path, dtype=dtype, device="cpu")

    monkeypatch.setattr(text, "load_t5_encoder", spy_loader)
    monkeypatch.setattr(bridge, "t5_dtype", lambda device=None: torch.float16)
    monkeypatch.setattr(bridge, "offload_device", lambda kind="unet": offload_marker if kind == "text"
                        else real_offload(kind))
    comfy_env.run_node(tn.T5Loader, t5_name="t5-tiny", precision="default")
    assert seen == {"dtype": torch.float16, "device": offload_marker}

    # a tokenizer beside the weights that does not belong to them (another vocabulary) is refused at load
    import transformers

    small = transformers.T5EncoderModel(transformers.T5Config(**{**hf_t5.config.to_dict(), "vocab_size": 64}))
    odd_dir = te_dir / "t5-odd"
    odd_dir.mkdir()
    (odd_dir / "config.json").write_text(json.dumps(small.config.to_dict()))
    save_file({k: v.contiguous() for k, v in small.state_dict().items() if k != "encoder.embed_tokens.weight"},
              str(odd_dir / "model.safetensors"))
    folder_paths.filename_list_cache.pop("text_encoders", None)
    monkeypatch.undo()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "text_encoders", ([str(te_dir)], {".safetensors"}))
    with pytest.raises(ValueError, match=r"^EchoVideo T5 Loader: the T5 \(t5-odd\) has 64 token embeddings but the "
                                         r"tokenizer in .* has \d+ tokens.*tokenizer/ folder beside the T5 weights"):
        comfy_env.run_node(tn.T5Loader, t5_name="t5-odd", precision="fp32")


def test_text_encode_needs_exactly_one_encoder(hf_t5):
    tn = comfy_env.pack_module("nodes.text_nodes")
    with pytest.raises(ValueError, match="exactly one"):
        comfy_env.run_node(tn.TextEncode, positive="a", negative="")
    with pytest.raises(ValueError, match="exactly one"):
        comfy_env.run_node(tn.TextEncode, positive="a", negative="", clip=object(), t5=object())


def test_text_encode_checks_its_links_at_queue_time():
    """validate_inputs gets the linked inputs' types from ComfyUI (which then skips its own type check for this
    node): one encoder of the right type passes; none, both, or a wrong type is refused before anything runs."""
    tn = comfy_env.pack_module("nodes.text_nodes")
    ok = tn.TextEncode.validate_inputs
    assert ok({"t5": "ECHOVIDEO_T5"}) is True
    assert ok({"clip": "CLIP", "positive": "STRING"}) is True
    assert ok({}).endswith("Neither is connected.") and "exactly one text encoder" in ok({})
    assert ok({"clip": "CLIP", "t5": "ECHOVIDEO_T5"}).endswith("Both are connected.")
    assert ok({"t5": "MODEL"}) == "EchoVideo Text Encode: 't5' is linked to an output of type MODEL; it takes ECHOVIDEO_T5"
    assert "'clip' is linked to an output of type ECHOVIDEO_T5; it takes CLIP" in ok({"clip": "ECHOVIDEO_T5"})
    assert "'positive' is linked to an output of type INT" in ok({"t5": "ECHOVIDEO_T5", "positive": "INT"})
    assert ok({"t5": "*"}) is True  # ComfyUI's wildcard fits, as in its own check


def test_t5_loader_missing_file_is_clear():
    tn = comfy_env.pack_module("nodes.text_nodes")
    with pytest.raises(FileNotFoundError, match="searched.*README"):
        comfy_env.run_node(tn.T5Loader, t5_name="nope.safetensors", precision="fp32")


def test_clip_with_wrong_vocab_is_rejected():
    tn = comfy_env.pack_module("nodes.text_nodes")
    tn.check_vocab(32128, 32100)
    with pytest.raises(ValueError, match="UMT5"):
        tn.check_vocab(256384, 32100)


def test_text_encode_shows_prompt_lengths_and_what_an_over_long_prompt_loses(hf_t5, monkeypatch):
    """The node shows each prompt's length under itself in the editor (ComfyUI's progress text for its id), and
    for a prompt past 226 tokens the cut-off end, not only in the server log; at every run, since the editor keeps
    a node's last text until it gets another."""
    clip = make_clip(hf_t5, "sd3")
    tn = comfy_env.pack_module("nodes.text_nodes")
    bridge = comfy_env.pack_module("nodes.bridge")
    shown = []
    monkeypatch.setattr(bridge, "show_text_on_node", lambda node_id, text: shown.append((node_id, text)))
    node = tn.TextEncode.PREPARE_CLASS_CLONE({bridge.io.Hidden.unique_id: "7"})
    long_prompt = "word " * 240 + "THE END"  # about 20 tokens too many
    comfy_env.run_node(node, positive=PROMPTS[0], negative=long_prompt, clip=clip)
    comfy_env.run_node(node, positive=PROMPTS[0], negative=PROMPTS[1], clip=clip)
    assert [node_id for node_id, _ in shown] == ["7", "7"]
    (positive, negative), fits = (line.split("\n") for _, line in shown)
    assert re.fullmatch(r"positive: \d+ of 226 tokens", positive)
    assert re.match(r"negative: 24\d tokens, longer than the 226 the model reads; left out: '.*THE END'$", negative)
    assert fits == [positive, "negative: 1 of 226 tokens"]  # the empty prompt is its EOS


def test_text_encode_names_what_t5_cannot_read_and_shows_nothing_for_a_clip_without_t5(hf_t5, monkeypatch):
    """Characters outside T5's vocabulary (Chinese, emoji) become its unknown token, which the model reads as
    nothing: the node names them in the prompt's own characters, also in a cut-off end. A CLIP that holds no T5 is
    refused before any token count is shown."""
    from types import SimpleNamespace

    clip = make_clip(hf_t5, "sd3")
    tn = comfy_env.pack_module("nodes.text_nodes")
    bridge = comfy_env.pack_module("nodes.bridge")
    shown = []
    monkeypatch.setattr(bridge, "show_text_on_node", lambda node_id, text: shown.append(text))
    node = tn.TextEncode.PREPARE_CLASS_CLONE({bridge.io.Hidden.unique_id: "7"})
    comfy_env.run_node(node, positive="一个女人在公园里微笑 smiles 🙂🎬 at the camera",
                       negative="word " * 240 + "低质量 blurry", clip=clip)
    lines = shown[0].split("\n")
    assert re.fullmatch(r"positive: \d+ of 226 tokens", lines[0])
    assert lines[1] == ("positive: not in T5's vocabulary, so not read; write prompts in English: "
                        "'一个女人在公园里微笑', '🙂🎬'")
    assert re.match(r"negative: 2\d\d tokens, longer than the 226 the model reads; left out: '.*低质量 blurry'$",
                    lines[2]), lines[2]
    assert lines[3].endswith("'低质量'")
    assert len(lines) == 4
    shown.clear()
    comfy_env.run_node(node, positive="a {smiling} woman", negative="", clip=clip)  # English with a stray brace
    assert shown[0].split("\n")[1] == "positive: not in T5's vocabulary, so not read: '{', '}'"
    shown.clear()
    no_t5 = SimpleNamespace(cond_stage_model=torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="the connected CLIP holds no T5 encoder"):
        comfy_env.run_node(node, positive=PROMPTS[0], negative="", clip=no_t5)
    assert shown == []
