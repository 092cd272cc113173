"""predict_study's answers as DICOM objects, in the source study (docs/dicom.md, "What is written"):

- a Comprehensive 3D SR built on TID 1500 (highdicom): the nine exam labels as probabilities and
  their post-processed decisions (> 0.5), the per-slice P(PE on image) of every image, each with a
  reference to its SOP instance, the algorithm's identity and a research-use statement;
- key images of the most probable slices as secondary capture: the PE window with the activation
  map burned in, DERIVED, each referencing its source image.

Secondary capture, not a presentation state or a parametric map: every viewer and archive shows
an SC image as it is, while a presentation state cannot carry a colour map over the image and a
parametric map needs a viewer that fuses it; the overlay is a picture for people, not data.

UIDs are made under ``uid_root``; ``deterministic`` derives them from the input's UIDs and the
models' hashes, so a rerun writes objects an archive takes as the same ones."""
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

from ..core.errors import PipelineError
from ..core.io import atomic_path
from ..core.labels import EXAM_LABELS
from ..data.dicom import hex_uids_accepted, read_series_order
from ..infer.bundle import MANIFEST
from .cam import ensemble_cam, pick_slices
from .report import PE_CHANNEL
from .viewer import PREVIEW_SIZE, cam_overlay

RESEARCH_ONLY = "Research use only, not for diagnosis"
MANUFACTURER = "rsna_pe"
SCHEME = "99RSNAPE"  # a private coding scheme ("99" prefix): the labels have no standard codes
IMAGE_LABEL = "pe_present_on_image"
SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9901, 9902  # high, so they sort after the source's series


@dataclass
class DicomOut:
    """Where and how: ``folder`` of the objects, ``uid_root`` (ends with "."), ``deterministic``
    UIDs, ``key_images`` (top-k slices), the algorithm's ``identity`` (see ``algorithm_identity``)."""
    folder: Path
    uid_root: str = PYDICOM_ROOT_UID
    deterministic: bool = False
    key_images: int = 8
    identity: dict = field(default_factory=dict)

    def __post_init__(self):
        # checked before any study is predicted; generate_uid adds up to 24 digits within 64
        if not re.fullmatch(r"([1-9]\d*|0)(\.([1-9]\d*|0))*\.", self.uid_root) or len(self.uid_root) > 40:
            raise PipelineError(f"UID root {self.uid_root!r}: digits and dots ending with '.', "
                                "no leading zeros, at most 40 characters")


def algorithm_identity(cfg, sources):
    """{"name", "version", "parameters"}: the bundle's pair names and manifest sha256, or the run
    names and folds; ``sources`` the ensemble's per-pair weight hashes. Never a path."""
    pairs = [f"pair {i + 1}: CNN sha256 {s['cnn']}, head sha256 {s['rnn']}" for i, s in enumerate(sources)]
    if cfg.get("bundle"):
        raw = (Path(cfg["bundle"]) / MANIFEST).read_bytes()
        names = [f"{p['cnn']} + {p['rnn']}" for p in json.loads(raw)["pairs"]]
        version = f"model bundle, manifest sha256 {hashlib.sha256(raw).hexdigest()}"
    elif cfg.get("checkpoints"):
        names, version = [], "checkpoints"
    else:
        names = [f"{m['cnn']} + {m['rnn']} folds {list(cfg['folds'])}" for m in cfg["models"]]
        version = "training runs"
    return {"name": "rsna_pe CNN + head ensemble", "version": version, "parameters": names + pairs}


class Uids:
    """UIDs under a root: random, or derived from ``seed`` and what each one is for."""

    def __init__(self, root, deterministic, seed):
        self.root, self.seed = root, seed if deterministic else None

    def __call__(self, what):
        return generate_uid(self.root, None if self.seed is None else [self.seed, what])


def _seed(series, headers, identity):
    text = "\n".join([series, *(h.SOPInstanceUID for h in headers), repr(identity)])
    return hashlib.sha256(text.encode()).hexdigest()


def _code(k, label):
    from highdicom.sr import CodedConcept
    return CodedConcept(value=f"PE{k:02d}", scheme_designator=SCHEME, meaning=label)


def _probability(name, value, **kw):
    from highdicom.sr import CodedConcept, Measurement
    return Measurement(name=name, value=float(value),
                       unit=CodedConcept(value="{probability}", scheme_designator="UCUM", meaning="probability"),
                       **kw)


def _exam_group(exam, uids, algorithm):
    from highdicom.sr import MeasurementsAndQualitativeEvaluations, QualitativeEvaluation, TrackingIdentifier
    from pydicom.sr.codedict import codes
    yes, no = codes.SCT.Yes, codes.SCT.No
    codes_ = [_code(k, label) for k, label in enumerate(EXAM_LABELS)]
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=uids("tracking exam"), identifier="exam labels"),
        algorithm_id=algorithm,
        measurements=[_probability(c, v) for c, v in zip(codes_, exam)],
        # the post-processed probabilities decide at 0.5, as the competition's labels do
        qualitative_evaluations=[QualitativeEvaluation(c, yes if v > 0.5 else no) for c, v in zip(codes_, exam)])


def _slice_group(headers, img, uids, algorithm):
    from highdicom.sr import MeasurementsAndQualitativeEvaluations, SourceImageForMeasurement, TrackingIdentifier
    name = _code(len(EXAM_LABELS), IMAGE_LABEL)
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=uids("tracking slices"), identifier="per-slice PE"),
        algorithm_id=algorithm,
        measurements=[_probability(name, p, referenced_images=[
            SourceImageForMeasurement(h.SOPClassUID, h.SOPInstanceUID)]) for h, p in zip(headers, img)])


def structured_report(headers, exam, img, uids, identity):
    """The TID 1500 SR of one series: ``headers`` the source images' (z order), ``exam`` (9,) and
    ``img`` (S,) the post-processed probabilities."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    algorithm = hd.sr.AlgorithmIdentification(**identity)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uids("device"), name=identity["name"], manufacturer_name=MANUFACTURER))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=[_exam_group(exam, uids, algorithm), _slice_group(headers, img, uids, algorithm)])
    # The statement travels inside the report, not only in a header a viewer may not show.
    report[0].ContentSequence.append(hd.sr.TextContentItem(
        name=codes.DCM.Comment, value=RESEARCH_ONLY, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    sr = hd.sr.Comprehensive3DSR(
        evidence=headers, content=report[0], series_instance_uid=uids("sr series"),
        series_number=SR_SERIES_NUMBER, sop_instance_uid=uids("sr"), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True)
    sr.SeriesDescription = f"PE AI report ({RESEARCH_ONLY.lower()})"[:64]
    return sr


def burned_in(grey, cam):
    """uint8 grey (s, s) and a map in [0, 1] -> uint8 RGB (s, s, 3), the map blended in."""
    bgra = cam_overlay(cam, size=grey.shape[0]).astype(np.float32)
    a = bgra[..., 3:] / 255
    rgb = grey[..., None].astype(np.float32) * (1 - a) + bgra[..., 2::-1] * a
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def patient_orientation(header):
    """The letters of the image's row and column directions (the key image keeps the source's
    orientation: the preview is the whole slice, resized)."""
    iop = np.asarray(header.ImageOrientationPatient, float).reshape(2, 3)
    letters = ("LR", "PA", "HF")  # +x, -x; +y, -y; +z, -z (DICOM patient axes)
    return tuple(letters[int(np.argmax(abs(v)))][int(v[np.argmax(abs(v))] < 0)] for v in iop)


def key_image(header, rgb, prob, number, uids, series_uid):
    """One secondary-capture key image of ``header``'s slice (``rgb`` burned in)."""
    import highdicom as hd
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", patient_orientation=patient_orientation(header), series_instance_uid=series_uid, series_number=SC_SERIES_NUMBER,
        sop_instance_uid=uids(f"key image {header.SOPInstanceUID}"), instance_number=number,
        manufacturer=MANUFACTURER)
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.Laterality = None  # empty: a chest is unpaired, and absent is an error for dciodvfy (docs)
    sc.SeriesDescription = f"PE AI key images ({RESEARCH_ONLY.lower()})"[:64]
    sc.DerivationDescription = "PE window with the activation map (Grad-CAM) burned in"
    sc.ImageComments = f"{RESEARCH_ONLY}. P(PE on image) = {prob:.6f}"
    source = pydicom.Dataset()
    source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID = header.SOPClassUID, header.SOPInstanceUID
    sc.SourceImageSequence = [source]
    return sc


def write_objects(opts, infos, exam, img, previews, cams):
    """The SR and the key images of one predicted series into ``opts.folder``: ``infos`` its
    slices (z order), ``previews`` uint8 (S, 3, s, s), ``cams`` {slice index: map}; -> the files."""
    # highdicom logs every module it copies at INFO: one line per object would drown the run's log
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    with hex_uids_accepted():  # the competition's all-hex ids (see Limits in docs/dicom.md)
        return _write_objects(opts, infos, exam, img, previews, cams)


def _write_objects(opts, infos, exam, img, previews, cams):
    headers = [pydicom.dcmread(i.path, stop_before_pixels=True) for i in infos]
    if not all("SOPInstanceUID" in h for h in headers):
        raise PipelineError("an image has no SOPInstanceUID: no DICOM object can reference it")
    uids = Uids(opts.uid_root, opts.deterministic, _seed(headers[0].SeriesInstanceUID, headers, opts.identity))
    objects = [("SR", structured_report(headers, exam, img, uids, opts.identity))]
    top = np.argsort(-np.asarray(img), kind="stable")[:opts.key_images]
    sc_series = uids("sc series")
    for n, k in enumerate(top, 1):
        grey = previews[k][PE_CHANNEL]
        rgb = burned_in(grey, cams[k]) if k in cams else np.repeat(grey[..., None], 3, axis=2)
        objects.append(("SC", key_image(headers[k], rgb, float(img[k]), n, uids, sc_series)))
    opts.folder.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, ds in objects:  # named by their UIDs: no input file or folder name
        path = opts.folder / f"{kind}_{ds.SOPInstanceUID}.dcm"
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        written.append(path)
    return written


def write_study(opts, ens, series_dir, sops, exam, img):
    """Stage 7: the objects of one predicted series (``sops`` in the order of ``img``). Only with
    key images is the series decoded again, for previews and the Grad-CAM of those slices alone;
    the SR needs the headers only."""
    if opts.key_images <= 0:
        infos, images, previews = read_series_order(series_dir), None, None
    else:
        infos, images, previews = ens.read_with(series_dir, [PREVIEW_SIZE])
        previews = previews[PREVIEW_SIZE]
    by_sop = dict(zip(sops, np.asarray(img)))
    img = np.array([by_sop[i.sop] for i in infos])  # the SR lists the slices in z order
    picked, maps = pick_slices(img, opts.key_images), []
    if len(picked):  # a lung-cropped CNN's box costs a read: only where a map is drawn
        maps = ensemble_cam(ens, images, picked, PREVIEW_SIZE, regions=ens.crop_regions(series_dir))
    return write_objects(opts, infos, exam, img, previews, {int(k): m for k, m in zip(picked, maps)})
