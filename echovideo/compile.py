"""torch.compile of the repeated DiT block (not the whole model): with module inlining, all blocks share
one compiled graph, so it compiles once for all 42 blocks."""


def compile_blocks(model, backend: str = "inductor", mode=None, dynamic=None):
    for block in model.transformer_blocks:
        block.compile(backend=backend, mode=mode, dynamic=dynamic)
    model.compiled_with = backend
    return model
