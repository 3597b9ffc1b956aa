"""Error types with messages that name the input and the fix."""
import torch

# torch.OutOfMemoryError is torch 2.5+; before it, CUDA's out-of-memory error was torch.cuda.OutOfMemoryError
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
# torch's CPU allocator raises a plain RuntimeError: "DefaultCPUAllocator: can't allocate memory" (Linux, macOS)
# or "DefaultCPUAllocator: not enough memory" (Windows); errno 12 reads "Cannot allocate memory"
HOST_OUT_OF_MEMORY_MARKERS = ("DefaultCPUAllocator", "Cannot allocate memory")


def is_host_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, MemoryError) or (
        isinstance(error, RuntimeError) and any(m in str(error) for m in HOST_OUT_OF_MEMORY_MARKERS))


def is_out_of_memory(error: BaseException) -> bool:
    """Out of GPU memory or of RAM."""
    return isinstance(error, OUT_OF_MEMORY) or is_host_out_of_memory(error)


class EchoVideoInputError(ValueError):
    """An input has the wrong shape, size or value. Raised by `check`, it also carries `argument`, `got`
    and `needs`, so that a caller can report the input under its own name (e.g. a command-line option)."""


class CheckpointError(ValueError):
    """A model file does not hold what the loader needs."""


def check(condition: bool, argument: str, got, needs: str) -> None:
    if not condition:
        error = EchoVideoInputError(f"{argument}: got {got}, needs {needs}")
        error.argument, error.got, error.needs = argument, got, needs
        raise error


# import name -> the requirements.txt line that installs it
PIP_NAMES = {"cv2": "opencv-python", "onnxruntime": "onnxruntime", "insightface": "insightface",
             "facexlib": "facexlib", "diffusers": "diffusers", "transformers": "transformers", "av": "av",
             "onnx": "onnx", "sentencepiece": "sentencepiece"}
FACE_PACKAGES = ("onnxruntime", "insightface", "facexlib")  # imported only when the face models load
INSTALL_REQUIREMENTS = ("install the pack's requirements into ComfyUI's Python: python -m pip install -r "
                        "custom_nodes/ComfyUI-EchoVideo/requirements.txt")


class MissingPackageError(ImportError):
    """A Python package the pack needs is not installed (or does not import); names it and the install command."""

    def __init__(self, packages, what: str, cause: str = ""):
        names = [PIP_NAMES.get(p, p) for p in packages]
        if not names:
            problem = f"{what} cannot import its Python packages ({cause})"
        elif cause:
            problem = f"{what} needs the Python package {names[0]}, which does not import ({cause})"
        else:
            plural = len(names) > 1
            problem = (f"{what} needs the Python package{'s' if plural else ''} {', '.join(names)}, which "
                       f"{'are' if plural else 'is'} not installed")
        super().__init__(f"{problem}; {INSTALL_REQUIREMENTS}")
        self.packages = names


def import_failure(error: ImportError, what: str) -> MissingPackageError:
    """The MissingPackageError for an ImportError raised while loading `what`: the package not installed, or
    installed but broken (one of its own imports fails)."""
    top = (getattr(error, "name", None) or "").split(".")[0]
    if not top:
        return MissingPackageError([], what, cause=str(error))
    return MissingPackageError([top], what, cause="" if missing_packages(top) else str(error))


def missing_packages(*modules: str) -> list:
    """The top-level modules of `modules` that are not installed (found without importing them)."""
    import importlib.util
    import sys

    def installed(name: str) -> bool:
        if sys.modules.get(name) is not None:  # imported (also one without a spec); None there means blocked
            return True
        try:
            return importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            return False

    return [m for m in modules if not installed(m)]


def require_packages(what: str, *modules: str) -> None:
    missing = missing_packages(*modules)
    if missing:
        raise MissingPackageError(missing, what)
