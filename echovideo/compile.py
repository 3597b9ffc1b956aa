"""torch.compile of the repeated DiT block (not the whole model): with module inlining, all blocks share
one compiled graph, so it compiles once for all 42 blocks."""


def compile_blocks(model, backend: str = "inductor", mode=None, dynamic=None):
    """Compiles each block lazily (at its first call); a model already compiled with these options is kept."""
    settings = (backend, mode, dynamic)
    if getattr(model, "compile_settings", None) == settings:
        return model
    for block in model.transformer_blocks:
        block.compile(backend=backend, mode=mode, dynamic=dynamic)
    model.compiled_with = backend
    model.compile_settings = settings
    return model


def uncompile_blocks(model):
    """Back to eager blocks (the compiled code stays in torch's cache for a later compile_blocks)."""
    for block in model.transformer_blocks:
        block._compiled_call_impl = None  # what nn.Module.compile set; None = the eager call
    model.compiled_with = None
    model.compile_settings = None
    return model


def set_block_compile(model, settings):
    """Compiled blocks as `settings` (backend, mode, dynamic) ask, or eager blocks when settings is None."""
    if settings is None:
        return uncompile_blocks(model) if getattr(model, "compiled_with", None) is not None else model
    return compile_blocks(model, backend=settings.backend, mode=settings.mode, dynamic=settings.dynamic)
