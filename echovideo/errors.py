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
