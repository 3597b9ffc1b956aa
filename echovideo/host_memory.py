"""Host (CPU) memory during a long CPU decode.

glibc's malloc raises its mmap threshold as large blocks are freed (up to 32 MiB), after which the VAE's
large activations come from the heap, whose free holes the next chunk cannot always reuse: the decode's peak
RSS then depends on the order of allocations and drifts by up to about 90 MiB between identical runs. With
large blocks mapped and unmapped one by one (once the heap's free space is used up: malloc reuses that
first), the peak is what is live, whatever the video's length, at the price of page faults (they about
double a CPU decode's time on the `large` benchmark, which oneDNN's convs have made short).

A sampling loop wants the opposite: its per-step buffers of a few MiB (e.g. attention scores) reused from the heap.
`settle_heap` sets the thresholds glibc's dynamic rule would reach anyway, from the first step on.
"""
import contextlib
import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
LARGE_BLOCK_BYTES = 4 << 20  # 8 and 16 MiB left the 49-frame peak drifting by up to 60 MiB
# What glibc's dynamic rule converges to on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX, trim = 2 x mmap):
# set afterwards, since mallopt turns the dynamic rule off and has no getter to restore from.
STEADY_MMAP_THRESHOLD = 32 << 20
STEADY_TRIM_THRESHOLD = 64 << 20
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def glibc_mallopt():
    """libc's mallopt on Linux with glibc, else None; None as well when the user tuned malloc through the
    environment (their settings stay)."""
    if not sys.platform.startswith("linux"):
        return None
    if any(k in os.environ for k in USER_SETTINGS) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc.mallopt
    except (OSError, AttributeError):  # musl, or no mallopt
        return None


@contextlib.contextmanager
def large_blocks_unmapped_on_free():
    """Inside: blocks of 4 MiB or more are mmapped, so freeing one returns its pages to the OS at once.
    Yields whether the setting took effect (False off glibc)."""
    mallopt = glibc_mallopt()
    if mallopt is None:
        yield False
        return
    applied = mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES) == 1
    if applied:
        mallopt(M_TRIM_THRESHOLD, STEADY_TRIM_THRESHOLD)  # the heap's small blocks keep their pages
    try:
        yield applied
    finally:
        if applied:
            _set_steady_thresholds(mallopt)


def settle_heap() -> bool:
    """Sets glibc's mmap and trim thresholds to where its dynamic rule converges (32 and 64 MiB), so blocks under
    32 MiB are reused from the heap instead of being returned to the system and faulted back in (about 2,000 minor
    faults per `large` DiT attention call before the rule has moved). Returns whether it took effect (False off
    glibc, or where the user tuned malloc through the environment)."""
    mallopt = glibc_mallopt()
    return mallopt is not None and _set_steady_thresholds(mallopt)


def _set_steady_thresholds(mallopt) -> bool:
    mmap_set = mallopt(M_MMAP_THRESHOLD, STEADY_MMAP_THRESHOLD) == 1
    return mallopt(M_TRIM_THRESHOLD, STEADY_TRIM_THRESHOLD) == 1 and mmap_set
