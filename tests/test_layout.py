"""The model built from the released config has exactly the released checkpoint's keys and shapes."""
import json

import pytest
import torch

from echovideo.checkpoint import diagnose, expected_layout
from echovideo.config import RELEASED_CONFIG, TransformerConfig
from echovideo.transformer import EchoVideoTransformer
from golden import LAYOUT_FILE

pytestmark = pytest.mark.golden  # reads the shared golden folder's layout file: `-m "not golden"` leaves it out


def test_released_config_builds_released_layout_on_meta():
    layout = json.loads(LAYOUT_FILE.read_text())
    config = TransformerConfig.from_dict(layout["config"])
    assert config == RELEASED_CONFIG
    with torch.device("meta"):
        model = EchoVideoTransformer(config)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert set(ours) == set(layout["keys"]), (sorted(set(layout["keys"]) - set(ours))[:5],
                                              sorted(set(ours) - set(layout["keys"]))[:5])
    assert ours == layout["keys"]
    assert sum(v.numel() for v in model.state_dict().values()) == layout["num_parameters"]
    assert all(p.device.type == "meta" for p in model.parameters())


def test_diagnose_names_plain_cogvideox_and_in_channels():
    layout = json.loads(LAYOUT_FILE.read_text())["keys"]
    expected = expected_layout(RELEASED_CONFIG)
    plain = {k: tuple(v) for k, v in layout.items() if not k.startswith(("face_", "text_proj"))}
    plain["patch_embed.proj.weight"] = (3072, 16, 2, 2)
    msg = diagnose(plain, expected)
    assert "first missing: face_proj.weight" in msg
    assert "plain CogVideoX-5B" in msg
    assert "in_channels is 16 instead of 32" in msg
    assert diagnose({k: tuple(v) for k, v in layout.items()}, expected) is None
