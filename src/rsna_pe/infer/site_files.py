"""The files a site's validation stores with the models: ``operating_points.json``
(rsna_pe.infer.operating_points) and ``calibration.json`` (rsna_pe.infer.calibration).

They are read where validation wrote them (the file, or the run, validation or bundle folder
holding it; from a bundle only as its manifest lists and hashes it) and checked before they go
into a bundle: a new one (``export_models.py --operating-points --calibration``) or one made
from an existing bundle (rsna_pe.infer.bundle.derive). Loading a bundle parses them from its verified bytes
(rsna_pe.infer.bundle.open_bundle).
"""
from pathlib import Path

from ..core.errors import PipelineError
from ..core.io import in_folder
from . import calibration as _calibration
from . import operating_points as _operating_points
from .bundle_files import MANIFEST, read_verified

CALIBRATION, OPERATING_POINTS = _calibration.FILE, _operating_points.FILE
# Each site file's parser: its bytes (or text) and where they come from -> the checked document.
SITE_FILES = {OPERATING_POINTS: _operating_points.parse, CALIBRATION: _calibration.parse}


def read_bytes(file_or_dir, name):
    """(bytes, path) of the site file ``name``: ``file_or_dir`` itself, or ``name`` in that
    folder; in a model bundle's folder, only if its manifest lists it and the sha256 matches."""
    folder = Path(file_or_dir)
    if folder.is_dir():
        if (folder / MANIFEST).is_file():
            data = read_verified(folder, name)
            if data is None:
                raise PipelineError(f"{folder / name}: not listed in the bundle's {MANIFEST}")
            return data, folder / name
    path = in_folder(folder, name)
    if not path.is_file():
        raise PipelineError(f"{path}: file not found")
    return path.read_bytes(), path


def read_doc(file_or_dir, name):
    """The checked document of the site file ``name`` (see ``read_bytes``)."""
    data, path = read_bytes(file_or_dir, name)
    return SITE_FILES[name](data, path)


def given(operating_points=None, calibration=None):
    """{file name: (its bytes, its checked document)} of the site files given (each a file or a
    folder holding it; None: not given), as ``export`` and ``derive`` take them."""
    out = {}
    for name, where in ((OPERATING_POINTS, operating_points), (CALIBRATION, calibration)):
        if where:
            data, path = read_bytes(where, name)
            out[name] = (data, SITE_FILES[name](data, path))
    return out

