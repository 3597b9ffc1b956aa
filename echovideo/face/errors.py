"""Face pipeline errors: each message names the input and the fix."""

README_HINT = "see the README's model table for where to get it"


class FaceError(ValueError):
    """The photo (or an option) cannot give a face identity."""


class NoFaceFoundError(FaceError):
    """Neither detector found a face in the photo."""


class FaceIndexError(FaceError):
    """face_index asks for a face beyond the faces found."""


class FaceModelMissingError(FileNotFoundError):
    """A face model file is not where the caller said it would be."""

    def __init__(self, filename: str, folder: str, what: str = ""):
        self.model_file = filename
        self.folder = folder  # (not OSError.filename: that changes str())
        label = f" ({what})" if what else ""
        super().__init__(
            f"face model file '{filename}'{label} not found in folder '{folder}'; {README_HINT}"
        )


class FaceModelLoadError(ValueError):
    """A face model file is there but cannot be read as the model it should be."""

    def __init__(self, path: str, what: str, cause: BaseException):
        super().__init__(f"face model file '{path}' could not be loaded as the {what} "
                         f"({type(cause).__name__}: {cause}); it may be incomplete or another model: "
                         f"download it again ({README_HINT})")
