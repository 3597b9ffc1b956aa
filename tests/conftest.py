import os
import shutil
import sys

import pytest

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
    from golden import GoldenPathError, golden_paths

    try:
        golden_paths()
    except GoldenPathError as e:
        raise pytest.UsageError(str(e)) from None


def pytest_collection_modifyitems(config, items):
    """Every test that reads a golden file carries the `golden` marker, so `-m golden` selects all of them and
    `-m "not golden"` none."""
    for item in items:
        if "golden" in getattr(item, "fixturenames", ()) and item.get_closest_marker("golden") is None:
            item.add_marker(pytest.mark.golden)


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """A test that changes torch's thread count (bench_sampling.main(--threads 1)) must not change later tests."""
    import torch

    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def module_tmp_path(request, tmp_path_factory):
    """A folder for one module's shared tiny models, removed when the module ends: every tiny model set holds
    ~190 MB checkpoints, and keeping all modules' sets until the session ends needs gigabytes of disk."""
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def forget_comfyui_file_lists():
    """ComfyUI caches each model folder's file list with the folders' mtimes; a test's folder is removed when it
    passes, so a list cached from it must not reach the next test."""
    yield
    folder_paths = sys.modules.get("folder_paths")
    if folder_paths is not None:
        folder_paths.filename_list_cache.clear()
