import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
for p in (ROOT, TESTS):
    if p not in sys.path:
        sys.path.insert(0, p)


def pytest_configure(config):
    """A set but unusable ECHOVIDEO_GOLDEN (no path, e.g. ':' or '', or a missing file) stops the run with one
    clear message before collection, instead of golden tests skipping or running some other file."""
    if os.environ.get("ECHOVIDEO_GOLDEN") is None:
        return
    import pytest
    from golden import GoldenPathError, golden_paths

    try:
        golden_paths()
    except GoldenPathError as e:
        raise pytest.UsageError(str(e)) from None
