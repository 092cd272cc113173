"""Strict JSON for the files of site validation: numpy numbers plain and NaN null when written
(rsna_pe.core.io.json_ready; reading back: rsna_pe.core.io.json_document)."""
from ..core.io import atomic_write_json, in_folder, json_ready


def write_json(path, obj):
    atomic_write_json(path, json_ready(obj), indent=2)


def write_checked(doc, file_or_dir, name, validate):
    """Write ``doc``, checked by ``validate(doc, path)``, to ``file_or_dir`` (a folder gets
    ``name``); -> the path written."""
    path = in_folder(file_or_dir, name)
    validate(doc, path)
    write_json(path, doc)
    return path
