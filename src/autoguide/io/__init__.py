"""Model files (safetensors + JSON card), atomic writes, file hashes, EDM2 import/export."""

from autoguide.io.atomic import atomic_path, json_text, write_csv_atomic, write_json_atomic, write_text_atomic
from autoguide.io.digest import file_sha256
from autoguide.io.edm2_export import export_edm2
from autoguide.io.edm2_import import EDM2ImportError, import_edm2
from autoguide.io.model_file import ModelFileError, load_denoiser, read_card, read_model_file, save_model

__all__ = [
    "EDM2ImportError",
    "ModelFileError",
    "atomic_path",
    "export_edm2",
    "file_sha256",
    "import_edm2",
    "json_text",
    "load_denoiser",
    "read_card",
    "read_model_file",
    "save_model",
    "write_csv_atomic",
    "write_json_atomic",
    "write_text_atomic",
]
