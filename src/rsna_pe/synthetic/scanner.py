"""Scanner shift: the same phantoms as seen by another site's scanner, for site validation.

A :class:`ScannerShift` changes how a study is acquired and labelled in its DICOM header, never
what it holds (anatomy, findings and labels stay those of the plan):

- ``noise_scale``: the image noise (10-20 HU) times this (a noisier protocol, lower dose);
- ``hu_offset``: added to every HU (a CT-number calibration off by this much);
- ``thickness_factor``: slices this many times thicker than their spacing (1 = as thick as the
  spacing); each slice averages in its neighbours by the share of them its slab covers, so a
  clot on one slice is diluted and leaks faintly into the next;
- ``sharpen``: unsharp-mask amount of a sharper reconstruction kernel (edges overshoot and the
  noise grows); 0 = the smooth default;
- ``manufacturer``, ``model``, ``kvp``, ``kernel``: the header tags Manufacturer,
  ManufacturerModelName, KVP and ConvolutionKernel (unset: today's header).

The default shift is none: nothing is computed or written differently, so a set made without a
shift stays byte-identical to one made before this option existed.
"""
from dataclasses import asdict, dataclass, fields

import numpy as np

from ..core.errors import PipelineError

SHARPEN_SIGMA = 0.004  # Gaussian of the unsharp mask, as a share of the matrix (1 px at 256)
TAG_NAMES = {"manufacturer": "Manufacturer", "model": "ManufacturerModelName", "kvp": "KVP",
             "kernel": "ConvolutionKernel"}
TAG_LENGTHS = {"manufacturer": 64, "model": 64, "kernel": 16}


@dataclass(frozen=True)
class ScannerShift:
    noise_scale: float = 1.0
    hu_offset: float = 0.0
    thickness_factor: float = 1.0
    sharpen: float = 0.0
    manufacturer: str = None
    model: str = None
    kvp: float = None
    kernel: str = None

    def __post_init__(self):
        if not self.noise_scale >= 0:
            raise PipelineError(f"noise scale {self.noise_scale}: must be >= 0")
        if not self.thickness_factor >= 1:
            raise PipelineError(f"thickness factor {self.thickness_factor}: must be >= 1")
        if not self.sharpen >= 0:
            raise PipelineError(f"sharpen {self.sharpen}: must be >= 0")
        if not np.isfinite(self.hu_offset):
            raise PipelineError(f"HU offset {self.hu_offset}: must be a finite number")
        if self.kvp is not None and not self.kvp > 0:
            raise PipelineError(f"kVp {self.kvp}: must be > 0")
        for name, most in TAG_LENGTHS.items():  # the DICOM VR's limit (LO 64, SH 16)
            value = getattr(self, name)
            if value is not None and not 0 < len(str(value)) <= most:
                raise PipelineError(f"{name} '{value}': 1 to {most} characters")

    def params(self):
        """The settings that differ from no shift ({} for none): what synthetic.json records."""
        default = ScannerShift()
        return {f.name: v for f in fields(self) if (v := getattr(self, f.name)) != getattr(default, f.name)}

    @property
    def pixels_shifted(self):
        p = self.params()
        return any(k in p for k in ("noise_scale", "hu_offset", "thickness_factor", "sharpen"))

    @classmethod
    def from_params(cls, params):
        """Inverse of params(); None or {} give no shift."""
        try:
            return cls(**(params or {}))
        except TypeError as e:
            raise PipelineError(f"scanner shift: {e}") from None

    def header_tags(self):
        """{DICOM keyword: value} this shift sets on every slice."""
        return {TAG_NAMES[k]: v for k, v in asdict(self).items() if k in TAG_NAMES and v is not None}

    def apply(self, slices, matrix):
        """Slab averaging, sharper kernel and HU offset on a series' noisy HU slices (z order,
        float32); the noise itself was scaled when it was drawn (see anatomy.phantom)."""
        out = np.stack(slices).astype(np.float32)
        if self.thickness_factor > 1 and len(out) > 1:
            out = _thick_slabs(out, self.thickness_factor)
        if self.sharpen > 0:
            out = np.stack([_unsharp(s, self.sharpen, SHARPEN_SIGMA * matrix) for s in out])
        return out + np.float32(self.hu_offset)


def _thick_slabs(vol, factor):
    """Each slice plus its neighbours weighted by the share of them a slab ``factor`` spacings
    thick covers (at most the whole neighbour), normalised; the ends reuse the edge slice."""
    w = np.float32(min(1.0, (factor - 1) / 2))
    padded = np.concatenate([vol[:1], vol, vol[-1:]])
    return (vol + w * (padded[:-2] + padded[2:])) / (1 + 2 * w)


def _unsharp(img, amount, sigma):
    import cv2
    blur = cv2.GaussianBlur(img, (0, 0), sigmaX=max(float(sigma), 0.5), borderType=cv2.BORDER_REFLECT)
    return img + np.float32(amount) * (img - blur)
