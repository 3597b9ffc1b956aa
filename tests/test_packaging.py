"""The project files agree: pyproject's dependencies are requirements.txt's, every requirement has a
tested pin in constraints.txt within its range, and the README's memory tables are the memory plan's output."""
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def requirement_lines(name):
    lines = (ROOT / name).read_text().splitlines()
    return [Requirement(line.split("#")[0].strip()) for line in lines if line.split("#")[0].strip()]


def pins():
    return {canonicalize_name(r.name): next(iter(r.specifier)).version for r in requirement_lines("constraints.txt")}


def test_pyproject_dependencies_are_requirements_txt():
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml with tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(map(str, map(Requirement, project["dependencies"]))) == \
        sorted(map(str, requirement_lines("requirements.txt")))


def test_every_requirement_has_a_tested_pin_in_its_range():
    pinned = pins()
    for file in ("requirements.txt", "requirements-test.txt"):
        for req in requirement_lines(file):
            name = canonicalize_name(req.name)
            assert name in pinned, f"{file}: {req.name} has no version in constraints.txt"
            assert req.specifier.contains(pinned[name], prereleases=True), \
                f"{file}: {req} but constraints.txt pins {pinned[name]}"
    assert not {"torch", "torchvision"} & set(pinned)  # setup_env.sh pins those (ComfyUI owns them)


def test_readme_memory_tables_are_the_memory_plan_output(capsys):
    """The README's memory tables are what benchmarks/memory_plan.py --markdown prints, line for line."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("memory_plan", ROOT / "benchmarks" / "memory_plan.py")
    memory_plan = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(memory_plan)
    memory_plan.main(["--markdown"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    readme = (ROOT / "README.md").read_text().splitlines()
    assert len(rows) == 5 + 2 + 5 + 2 + 4 + 2
    assert [r for r in rows if r not in readme] == []


def test_pack_inside_a_comfyui_without_the_v3_api_says_why_it_is_not_loaded():
    """Inside a ComfyUI too old for comfy_api.latest, the pack logs why it registers no nodes (ComfyUI itself
    only says the module lacks its mappings); imported outside ComfyUI it stays quiet."""
    import subprocess
    import sys

    script = (
        "import importlib.util, sys, types\n"
        "if sys.argv[1] == 'inside': sys.modules['comfy'] = types.ModuleType('comfy')  # no comfy_api beside it\n"
        f"spec = importlib.util.spec_from_file_location('echovideo_pack', {str(ROOT / '__init__.py')!r}, "
        f"submodule_search_locations=[{str(ROOT)!r}])\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules['echovideo_pack'] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "print('entrypoint' if hasattr(mod, 'comfy_entrypoint') else 'no entrypoint')\n")
    inside = subprocess.run([sys.executable, "-c", script, "inside"], capture_output=True, text=True, timeout=120)
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.strip() == "no entrypoint"
    assert "ComfyUI-EchoVideo is not loaded: No module named 'comfy" in inside.stderr, inside.stderr
    assert "needs ComfyUI 0.3.64 or newer" in inside.stderr
    outside = subprocess.run([sys.executable, "-c", script, "outside"], capture_output=True, text=True, timeout=120)
    assert outside.returncode == 0 and outside.stdout.strip() == "no entrypoint"
    assert "not loaded" not in outside.stderr, outside.stderr


def test_a_second_copy_of_the_pack_registers_nothing_and_names_both_folders(tmp_path):
    """Two copies in custom_nodes: the second would run the first one's `echovideo` library (one top-level name on
    sys.path), so it stays unloaded and says which folders to clean up; the first loads as usual."""
    import shutil
    import subprocess
    import sys

    copies = []
    for name in ("ComfyUI-EchoVideo", "EchoVideo copy 2"):
        folder = tmp_path / name
        shutil.copytree(ROOT / "echovideo", folder / "echovideo", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(ROOT / "nodes", folder / "nodes", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "__init__.py", folder / "__init__.py")
        copies.append(str(folder))
    script = (
        "import importlib.util, sys\n"
        "for i, folder in enumerate(sys.argv[1:]):\n"
        "    spec = importlib.util.spec_from_file_location(f'pack{i}', folder + '/__init__.py', "
        "submodule_search_locations=[folder])\n"
        "    mod = importlib.util.module_from_spec(spec); sys.modules[f'pack{i}'] = mod\n"
        "    spec.loader.exec_module(mod)\n"
        "    exec(f'from pack{i} import *')\n"
        "import echovideo; print(echovideo.__file__)\n")
    run = subprocess.run([sys.executable, "-c", script, *copies], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)  # not the repository: its own echovideo would be first on sys.path
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().startswith(copies[0])
    assert (f"ComfyUI-EchoVideo in {copies[1]} is not loaded: Python's `echovideo` library is the one in "
            f"{copies[0]}") in run.stderr, run.stderr
    assert f"in {copies[0]} is not loaded" not in run.stderr
    assert "Keep one copy of ComfyUI-EchoVideo in custom_nodes" in run.stderr


def test_step_cache_defaults_are_the_documented_ones():
    """The node's default threshold is the one the README documents and benchmarks (0.05): every other test
    compares against the constant itself, so a changed default would pass unseen."""
    import re

    from echovideo.step_cache import DEFAULT_THRESHOLD, DEFAULT_WARMUP_STEPS

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    documented = {float(x) for x in re.findall(r"[Dd]efault(?: threshold)? (\d+\.\d+)", readme)}
    assert documented == {0.05} and DEFAULT_THRESHOLD == 0.05 and DEFAULT_WARMUP_STEPS == 2
