"""Block swap outside ComfyUI: the last N DiT blocks live on the offload device and visit the compute
device only while they run. (Inside ComfyUI, its own partial loading does this.)"""
import torch


class BlockSwap:
    def __init__(self, model, blocks_on_offload: int, device, offload_device="cpu"):
        n = len(model.transformer_blocks)
        if not 0 <= blocks_on_offload <= n:
            raise ValueError(f"blocks_on_offload: got {blocks_on_offload}, needs 0..{n} (the model has {n} blocks)")
        self.device, self.offload_device = torch.device(device), torch.device(offload_device)
        self.first_swapped = n - blocks_on_offload
        self.model = model
        for i, block in enumerate(model.transformer_blocks):
            block.to(self.offload_device if i >= self.first_swapped else self.device)

    def before(self, index, block):
        if index >= self.first_swapped:
            block.to(self.device, non_blocking=True)

    def after(self, index, block):
        if index >= self.first_swapped:
            block.to(self.offload_device)


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
