"""DICOM writing: CT slices with exact, caller-given HU, uncompressed or in a lossless
compressed transfer syntax, with a realistic CT header."""
import contextlib
import hashlib
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from ..core.errors import PipelineError

UID_ROOT = "rsna-pe-synthetic"
COMPRESSED_SYNTAXES = (JPEGLosslessSV1, JPEG2000Lossless, RLELossless)
# Compressed series take these in turn: JPEG 2000 is rarer since it encodes ~5x slower.
COMPRESSION_CYCLE = (JPEGLosslessSV1, RLELossless, JPEG2000Lossless, JPEGLosslessSV1, RLELossless)

# Rescale variants: (intercept per slice parity (even, odd), stored padding value).
# "standard" is the common GE-like case (padding -2000 stored = -3024 HU); "mixed" changes the
# intercept from slice to slice, which only per-slice rescaling reads right.
RESCALE_VARIANTS = {
    "standard": ((-1024, -1024), -2000),
    "intercept_1000": ((-1000, -1000), -2000),
    "intercept_2048": ((-2048, -2048), 0),
    "mixed": ((-1024, -1000), -2000),
}


def ids_unchecked(uids):
    """Context in which these ids are written as given: value validation is off while any of
    them is not a valid DICOM UID (the competition's 12-hex-digit ids are not), so pydicom
    does not warn once per element and file; otherwise nothing changes."""
    if all(pydicom.uid.UID(str(u), validation_mode=pydicom.config.IGNORE).is_valid for u in uids):
        return contextlib.nullcontext()
    return pydicom.config.disable_value_validation()


def encode_frame(stored, transfer_syntax):
    """int16 (H, W) -> encoded bytes of one frame (JPEG Lossless SV1, JPEG 2000 lossless, RLE).

    Encoded with GDCM (python-gdcm): pydicom 3 encodes RLE itself but has no JPEG Lossless
    encoder, and its JPEG 2000 encoder needs a package this project does not install.
    """
    try:
        import gdcm
    except ImportError:
        raise PipelineError(f"python-gdcm is needed to write {transfer_syntax.name} "
                            "(pip install python-gdcm)") from None
    stored = np.ascontiguousarray(stored, dtype="<i2")
    rows, cols = stored.shape
    writer = gdcm.ImageWriter()  # GDCM wants images made by a writer; keep it referenced
    image = writer.GetImage()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((cols, rows, 1))
    image.SetPhotometricInterpretation(
        gdcm.PhotometricInterpretation(gdcm.PhotometricInterpretation.MONOCHROME2))
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.ImplicitVRLittleEndian))
    image.SetPixelFormat(gdcm.PixelFormat(1, 16, 16, 15, 1))  # 1 sample, 16 bits, signed
    elem = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    elem.SetByteStringValue(stored.tobytes())
    image.SetDataElement(elem)
    conv = gdcm.ImageChangeTransferSyntax()
    conv.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(str(transfer_syntax))))
    conv.SetInput(image)
    if not conv.Change():
        raise PipelineError(f"GDCM could not encode a frame as {transfer_syntax.name}")
    seq = conv.GetOutput().GetDataElement().GetSequenceOfFragments()
    if seq is None or seq.GetNumberOfFragments() < 1:
        raise PipelineError(f"GDCM returned no fragments for {transfer_syntax.name}")
    # GDCM hands bytes back as str; surrogateescape restores them unchanged.
    return b"".join(seq.GetFragment(i).GetByteValue().GetBuffer().encode("utf-8", "surrogateescape")
                    for i in range(seq.GetNumberOfFragments()))


def _ds_str(v):
    """A DS value: the shortest exact text when it fits DS's 16 characters, else the closest."""
    s = repr(float(v))
    if s.endswith(".0"):
        s = s[:-2]
    return s if len(s) <= 16 else format_number_as_ds(float(v))


def series_header(study_uid, series_uid, frame_uid, patient_id, *, study_date="20200101",
                  kvp=100, series_number=1, slice_thickness=None):
    """Tags every slice of a series shares."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = "SYNTHETIC"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT PULMONARY ANGIOGRAM"
    ds.SeriesDescription = "CTPA 1.0 AXIAL"
    ds.PatientName = "SYNTHETIC^PHANTOM"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "CHEST"
    if slice_thickness is not None:
        ds.SliceThickness = _ds_str(slice_thickness)
    ds.KVP = _ds_str(kvp)
    ds.PatientPosition = "FFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleType = "HU"
    return ds


def set_tags(ds, tags):
    """Set {keyword: value} on a header; numbers of a DS tag (KVP) are written as DS text."""
    for keyword, value in tags.items():
        if isinstance(value, (int, float)):
            value = _ds_str(value)
        setattr(ds, keyword, value)


def write_dataset(path, header, stored, *, sop_uid, z, x0, y0, spacing, instance_number,
                  intercept, slope, transfer_syntax, padding_value=None, drop_tags=()):
    """Write one slice: the series ``header`` plus this slice's tags and stored int16 pixels."""
    ds = Dataset()
    ds.update(header)
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = int(instance_number)
    ds.ImagePositionPatient = [_ds_str(x0), _ds_str(y0), _ds_str(z)]
    ds.SliceLocation = _ds_str(z)
    ds.Rows, ds.Columns = (int(n) for n in stored.shape)
    ds.PixelSpacing = [_ds_str(spacing), _ds_str(spacing)]
    ds.RescaleIntercept = _ds_str(intercept)
    ds.RescaleSlope = _ds_str(slope)
    if padding_value is not None:
        ds.add_new(0x00280120, "SS", int(padding_value))  # PixelPaddingValue (signed pixels)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    stored = np.ascontiguousarray(stored, dtype="<i2")
    if transfer_syntax == ExplicitVRLittleEndian:
        ds.PixelData = stored.tobytes()
        ds["PixelData"].VR = "OW"
    else:
        ds.PixelData = encapsulate([encode_frame(stored, transfer_syntax)])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "00"
    for name in drop_tags:
        if name in ds:
            del ds[name]
    ds.save_as(path, enforce_file_format=True)


def _per_slice(value, n, name):
    arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (n,))
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr


def _to_stored(hu, intercept, slope):
    stored = np.rint((np.asarray(hu, dtype=np.float64) - intercept) / slope)
    if stored.min() < -32768 or stored.max() > 32767:
        raise ValueError(f"HU do not fit int16 with intercept {intercept}, slope {slope}")
    return stored.astype(np.int16)


def write_slice(path, hu, z, *, intercept=-1024, slope=1, transfer_syntax=ExplicitVRLittleEndian,
                pixel_spacing=0.7, instance_number=1, study_uid=None, series_uid=None,
                sop_uid=None, padding_value=None, drop_tags=(), seed=0):
    """Write one CT slice; it decodes to ``round((hu - intercept) / slope) * slope + intercept``
    HU (exactly ``hu`` when ``hu - intercept`` is a multiple of ``slope``, e.g. integer HU and
    slope 1). Returns the SOPInstanceUID. See :func:`write_series` for the arguments."""
    hu = np.asarray(hu)
    if hu.ndim != 2:
        raise ValueError(f"write_slice wants one (H, W) slice, got shape {hu.shape}")
    path = Path(path)
    sop = write_series(path.parent, hu[None], [z], intercept=intercept, slope=slope,
                       transfer_syntax=transfer_syntax, pixel_spacing=pixel_spacing,
                       instance_numbers=[instance_number], study_uid=study_uid,
                       series_uid=series_uid, sop_uids=[sop_uid] if sop_uid else None,
                       padding_value=padding_value, drop_tags=drop_tags, seed=seed,
                       file_names=[path.name])
    return sop[0]


def _series_arrays(hu, z_positions, intercept, slope, transfer_syntax):
    """Checked inputs of write_series: (hu, z, intercepts, slopes, transfer syntax UID)."""
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"write_series wants (S, H, W) HU, got shape {hu.shape}")
    transfer_syntax = pydicom.uid.UID(str(transfer_syntax))
    if transfer_syntax not in (ExplicitVRLittleEndian, *COMPRESSED_SYNTAXES):
        raise ValueError(f"transfer syntax {transfer_syntax} is not one this writer supports")
    n = hu.shape[0]
    if len(z_positions) != n:
        raise ValueError(f"{len(z_positions)} z positions for {n} slices")
    z = _per_slice(z_positions, n, "z_positions")
    icp = _per_slice(intercept, n, "intercept")
    slp = _per_slice(slope, n, "slope")
    if np.any(slp == 0):
        raise ValueError("slope must not be 0")
    return hu, z, icp, slp, transfer_syntax


def write_series(series_dir, hu, z_positions, *, intercept=-1024, slope=1,
                 transfer_syntax=ExplicitVRLittleEndian, pixel_spacing=0.7,
                 instance_numbers=None, study_uid=None, series_uid=None, sop_uids=None,
                 padding_value=None, drop_tags=(), seed=0, file_names=None):
    """Write a CT series with exact, caller-given HU; return the SOPInstanceUIDs in input order.

    - ``hu``: (S, H, W) HU values (any numeric dtype); slice k lies at ``z_positions[k]``
      (ImagePositionPatient z, need not be sorted). Stored values are
      ``round((hu - intercept) / slope)`` as signed int16 (ValueError if they do not fit).
    - ``intercept``, ``slope``: a number or one per slice (to test per-slice rescale).
    - ``transfer_syntax``: a pydicom UID: ExplicitVRLittleEndian (default), JPEGLosslessSV1
      (1.2.840.10008.1.2.4.70), JPEG2000Lossless (.4.90) or RLELossless (.5); all lossless.
    - ``instance_numbers``: default 1..S in ascending z.
    - UIDs: default ones derive from ``seed`` and the data, so equal calls write equal files
      and different data never share UIDs; given ones may also be Kaggle-style hex ids.
      Files are named ``<SOPInstanceUID>.dcm`` unless ``file_names`` (one per slice) are given.
    - ``pixel_spacing``: mm, square pixels; the image is centred on x = y = 0.
    - ``padding_value``: stored PixelPaddingValue tag, if any (pixels are not changed).
    - ``drop_tags``: keyword names removed from every file, e.g. ``("ImagePositionPatient",)``
      to test a reader's fallback.
    """
    hu, z, icp, slp, transfer_syntax = _series_arrays(hu, z_positions, intercept, slope,
                                                      transfer_syntax)
    n = hu.shape[0]
    digest = hashlib.sha256(np.ascontiguousarray(hu).tobytes() + z.tobytes()
                            + icp.tobytes() + slp.tobytes()).hexdigest()
    src = [UID_ROOT, "write_series", str(seed), digest]
    study_uid = study_uid or generate_uid(entropy_srcs=src + ["study"])
    series_uid = series_uid or generate_uid(entropy_srcs=src + ["series"])
    sop_uids = list(sop_uids) if sop_uids else [generate_uid(entropy_srcs=src + ["sop", str(k)])
                                                for k in range(n)]
    if instance_numbers is None:
        instance_numbers = np.empty(n, int)
        instance_numbers[np.argsort(z, kind="stable")] = np.arange(1, n + 1)
    series_dir = Path(series_dir)
    series_dir.mkdir(parents=True, exist_ok=True)
    half = pixel_spacing * hu.shape[2] / 2
    with ids_unchecked([study_uid, series_uid, *sop_uids]):
        header = series_header(study_uid, series_uid,
                               generate_uid(entropy_srcs=src + ["frame", study_uid]),
                               f"SYN{digest[:8].upper()}")
        for k in range(n):
            name = file_names[k] if file_names else f"{sop_uids[k]}.dcm"
            write_dataset(series_dir / name, header, _to_stored(hu[k], icp[k], slp[k]),
                          sop_uid=sop_uids[k], z=z[k], x0=-half, y0=-half, spacing=pixel_spacing,
                          instance_number=instance_numbers[k], intercept=icp[k], slope=slp[k],
                          transfer_syntax=transfer_syntax, padding_value=padding_value,
                          drop_tags=drop_tags)
    return sop_uids
