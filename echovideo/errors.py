"""Error types with messages that name the input and the fix."""


class EchoVideoInputError(ValueError):
    """An input has the wrong shape, size or value."""


class CheckpointError(ValueError):
    """A model file does not hold what the loader needs."""


def check(condition: bool, argument: str, got, needs: str) -> None:
    if not condition:
        raise EchoVideoInputError(f"{argument}: got {got}, needs {needs}")
