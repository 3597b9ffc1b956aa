"""Block swap outside ComfyUI: the last N DiT blocks live on the offload device and visit the compute
device only while they run. (Inside ComfyUI, its own partial loading does this.)"""
import torch


def _tensor_slots(block):
    """(dict, name) of every parameter and buffer of the block, where the module keeps it."""
    return [(store, name) for m in block.modules() for store in (m._parameters, m._buffers)
            for name, t in store.items() if t is not None]


def _pinned(t: torch.Tensor) -> torch.Tensor:
    """Page-locked copy (so the host-to-GPU copy can be asynchronous); the tensor itself where pinning fails
    (e.g. a pinned-memory limit)."""
    try:
        return t.pin_memory()
    except RuntimeError:
        return t


def _on(t: torch.Tensor, device) -> torch.Tensor:
    moved = t.detach().to(device, non_blocking=True)
    return torch.nn.Parameter(moved, requires_grad=False) if isinstance(t, torch.nn.Parameter) else moved


class BlockSwap:
    """The swapped blocks keep their weights' home copies on the offload device: before a block runs, its
    modules get copies on the compute device; after it, the home copies again. Weights do not change during
    inference, so nothing is copied back."""

    def __init__(self, model, blocks_on_offload: int, device, offload_device="cpu"):
        n = len(model.transformer_blocks)
        if not 0 <= blocks_on_offload <= n:
            raise ValueError(f"blocks_on_offload: got {blocks_on_offload}, needs 0..{n} (the model has {n} blocks)")
        self.device, self.offload_device = torch.device(device), torch.device(offload_device)
        self.first_swapped = n - blocks_on_offload
        self.model = model
        pin = self.device.type == "cuda" and self.offload_device.type == "cpu" and torch.cuda.is_available()
        self.home = {}  # block index -> [(module dict, name, home tensor)], found once here, not at every call
        for i, block in enumerate(model.transformer_blocks):
            block.to(self.offload_device if i >= self.first_swapped else self.device)
            if i >= self.first_swapped:
                slots = _tensor_slots(block)
                if pin:
                    for store, name in slots:
                        store[name].data = _pinned(store[name].data)
                self.home[i] = [(store, name, store[name]) for store, name in slots]

    def before(self, index, block):
        for store, name, t in self.home.get(index, ()):
            store[name] = _on(t, self.device)

    def after(self, index, block):
        for store, name, t in self.home.get(index, ()):
            store[name] = t


def enable_block_swap(model, blocks_on_offload: int, device, offload_device="cpu") -> BlockSwap:
    """Moves the rest of the model to `device` and installs the swap hook."""
    for name, module in model.named_children():
        if name != "transformer_blocks":
            module.to(device)
    swap = BlockSwap(model, blocks_on_offload, device, offload_device)
    model.block_hook = swap
    return swap


def disable_block_swap(model, device) -> None:
    model.block_hook = None
    model.to(device)
