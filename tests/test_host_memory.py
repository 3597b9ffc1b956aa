"""echovideo.host_memory: during a CPU decode, freed large blocks go back to the OS (a flat decode peak),
glibc's steady thresholds afterwards, and the user's own malloc settings left alone."""
import json
import os
import subprocess
import sys

import pytest
import torch

from echovideo import host_memory, tiny
from echovideo import vae as vae_lib

glibc = pytest.mark.skipif(host_memory.glibc_mallopt() is None, reason="needs Linux with glibc's mallopt")


PATTERN = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from echovideo import host_memory

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) / 1024.0 for l in f if l.startswith("VmRSS:"))

def freed_but_kept_mib(blocks=6, block_mib=8):
    # large blocks, each followed by a small live tensor (the heap cannot shrink past those), then the
    # large ones freed: how much of them the process still holds
    before = rss_mib()
    large, keep = [], []
    for _ in range(blocks):
        large.append(torch.ones(block_mib << 18))
        keep.append(torch.ones(64))
    grown = rss_mib() - before
    del large
    return grown, rss_mib() - before

torch.ones(1 << 18).add_(1).sum()  # one-off growth first (the first tensors, the OpenMP worker's stack)
with host_memory.large_blocks_unmapped_on_free() as applied:
    inside = freed_but_kept_mib()
after = freed_but_kept_mib()  # glibc's steady 32 MiB threshold: 8 MiB blocks come from the heap
print(json.dumps(dict(applied=applied, inside=inside, after=after)))
"""


@glibc
def test_large_blocks_return_to_the_os_inside_and_stay_after():
    """In a fresh process (in a long-lived one, free heap space is reused before any new mapping)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", PATTERN, root], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["applied"]
    (grown_inside, kept_inside), (grown_after, kept_after) = r["inside"], r["after"]
    assert grown_inside > 38 and grown_after > 38, r  # 48 MiB touched each time
    # a few MiB may come from free heap space left by the imports (malloc reuses it before mapping anew)
    assert kept_inside < 12, f"{kept_inside:.1f} MiB of 48 freed MiB still held inside the context"
    assert kept_after > 36, f"only {kept_after:.1f} MiB held after it: the control shows nothing"


def test_users_malloc_environment_is_left_alone(monkeypatch):
    for name in host_memory.USER_SETTINGS + ("GLIBC_TUNABLES",):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")
    assert host_memory.glibc_mallopt() is None
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1048576")
    with host_memory.large_blocks_unmapped_on_free() as applied:
        assert applied is False


def test_not_linux_is_a_no_op(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    with host_memory.large_blocks_unmapped_on_free() as applied:
        assert applied is False


def test_cpu_decode_runs_inside_the_setting(monkeypatch):
    entered = []
    real = host_memory.large_blocks_unmapped_on_free

    def spy():
        entered.append(True)
        return real()

    monkeypatch.setattr(vae_lib, "large_blocks_unmapped_on_free", spy)
    vae = tiny.tiny_vae(tiny.PRESETS["shared"])
    frames = vae_lib.decode_to_images(vae, torch.randn(1, 2, 4, 8, 8))
    assert entered == [True] and frames.shape[-1] == 3
