"""Pixels and files, with no Django: what a file is or why it is refused (`inspect`),
content-addressed storage (`storage`), previews and model-sized pictures (`pixels`), and
which slide patches the model sees (`patches`). The synthetic demo and test images are in
`samples`. The layers contract in pyproject.toml keeps Django out of this package."""

from imaging.inspect import ImageInfo, ImageRejected, inspect_image
from imaging.pixels import load_for_model, render_preview
from imaging.storage import (
    StagedFolder,
    StagedUpload,
    StoredFile,
    discard,
    finalise_file,
    relative_path_for,
    safe_suffix,
    staged_folder,
    staged_upload,
    store_file,
    suffix_for,
    sweep_tmp,
)

__all__ = [
    "ImageInfo",
    "ImageRejected",
    "StagedFolder",
    "StagedUpload",
    "StoredFile",
    "discard",
    "finalise_file",
    "inspect_image",
    "load_for_model",
    "relative_path_for",
    "render_preview",
    "safe_suffix",
    "staged_folder",
    "staged_upload",
    "store_file",
    "suffix_for",
    "sweep_tmp",
]
