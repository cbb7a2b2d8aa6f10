"""Model files (safetensors + JSON card) and atomic writes."""

from autoguide.io.atomic import atomic_path, write_text_atomic
from autoguide.io.edm2_export import export_edm2
from autoguide.io.edm2_import import EDM2ImportError, import_edm2
from autoguide.io.model_file import ModelFileError, load_denoiser, read_card, read_model_file, save_model

__all__ = ["EDM2ImportError", "ModelFileError", "export_edm2", "import_edm2", "atomic_path", "load_denoiser", "read_card", "read_model_file", "save_model", "write_text_atomic"]
