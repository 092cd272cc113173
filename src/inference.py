"""Stage 7: raw test DICOM -> submission.csv with the six CNN + LSTM pairs.

    python src/inference.py [-c configs/inference.yml] [key=value ...]

Reads ``<data_dir>/<split>.csv`` and its DICOM series (or, with ``input_layout=any``, every study
found by content in any tree under ``<data_dir>/<split>``: docs/dicom.md), and the models from their run folders
or from a model bundle (``bundle=DIR``, see docs/bundle.md); writes ``<output_dir>/submission.csv``
(validated: every id once, labels in [0, 1], every consistency rule; a submission that fails is
not written), ``errors.csv``, ``acquisition.csv`` (per study its scanner fields, read from a
header the models' input is read from anyway: a subgroup csv for validate_site.py) and
``record.json`` (every pair's checkpoint hashes, the settings that change predictions, and the
calibration a bundle carries, applied after post-processing: rsna_pe.infer.calibration). One study fails alone: whatever goes wrong while reading or
predicting it (ids that are not safe file names, rsna_pe.core.ids; a broken header; files of more
than one series; slices that differ from the csv; a model error or a non-finite output), it
gets the label prior, made consistent, so that the submission stays complete and valid, and
is listed with a one-line reason in errors.csv and the log. The command then warns and exits 0
(``on_error: warn``) or exits 2 and writes no submission (``on_error: fail``). A rerun with the
same record writes nothing; another record needs ``overwrite=true`` (the old submission is
kept as submission.prev.csv). Under torchrun the ranks share the studies and rank 0 writes.
With ``dicom_out=DIR`` rank 0 also writes each predicted study's DICOM objects into
``DIR/<StudyInstanceUID>/`` (a TID 1500 SR, and with ``dicom_key_images`` key images:
rsna_pe.viz.dicom_out, docs/dicom.md); a study whose objects fail is listed in errors.csv, its
predictions kept. Without it every output is as it would be without these keys.
With ``runtime=onnx`` a bundle's ONNX models run with ONNX Runtime on ``onnx_threads`` CPU
threads, in one process (not under torchrun) and without importing torch
(rsna_pe.infer.onnx_runtime); the reading, post-processing and outputs are the same.
"""
import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from rsna_pe.core import cli, ids, paths, runtime
from rsna_pe.core.config import save_config
from rsna_pe.core.errors import ConfigError, PipelineError
from rsna_pe.core.io import atomic_to_csv, has_outputs, read_csv
from rsna_pe.core.labels import ID_COLUMNS, study_series
from rsna_pe.data.acquisition import fields_table
from rsna_pe.data.discovery import tree_split
from rsna_pe.infer.ensemble import StudyReader, load_ensemble, read_ahead, uses_onnx
from rsna_pe.infer.inference_records import submission_record
from rsna_pe.metric import to_submission, validate_submission
from rsna_pe.records import provenance
from rsna_pe.viz.dicom_out import DicomOut, algorithm_identity, write_study

log = logging.getLogger("inference")


def study_dirs(root, df, source):
    """{study: its series folder} of the studies whose ids are safe file names, and
    [(study, reason)] for the others, which are never joined to a path."""
    dirs, refused = {}, []
    for study, series in study_series(df, source):
        try:
            dirs[study] = paths.series_dir(root, study, series)
        except ids.UnsafeIdError as e:
            refused.append((study, str(e)))
    return dirs, refused


def read_inputs(cfg, data, out, d):
    """The studies to predict: -> ({study: its series folder or files}, {study: its
    SOPInstanceUIDs}, [(study, reason)] to get the label prior, [(study, reason)] left out,
    the csv of ids the record hashes). ``input_layout: kaggle`` reads ``<split>.csv`` and its
    folders; ``any`` finds the studies in any tree under ``<data_dir>/<split>`` by content and
    predicts each study's series chosen by ``series_selection`` (rsna_pe.data.discovery); their
    ids go to ``<output_dir>/inputs.csv``."""
    root = data / cfg["split"]
    if cfg["input_layout"] == "kaggle":
        df = read_csv(data / f"{cfg['split']}.csv", ID_COLUMNS, id_columns=ID_COLUMNS, dtype=str)
        dirs, refused = study_dirs(root, df, f"{cfg['split']}.csv")
        return dirs, df.groupby("StudyInstanceUID")["SOPInstanceUID"].apply(list).to_dict(), refused, [], \
            data / f"{cfg['split']}.csv"
    if cfg["input_layout"] != "any":
        raise ConfigError(f"input_layout {cfg['input_layout']!r}: kaggle or any")
    if not root.is_dir():
        raise PipelineError(f"{root}: not a folder")
    chosen, unlisted = tree_split(root, cfg["series_selection"])
    ids_csv = out / "inputs.csv"
    if d.is_main:  # the ids of what is predicted, hashed by the record like the Kaggle csv
        rows = [(study, s.uid, sop) for study, s in sorted(chosen.items()) for sop in s.sops]
        atomic_to_csv(pd.DataFrame(rows, columns=ID_COLUMNS), ids_csv)
    for where, reason in unlisted:
        log.warning("%s: %s; left out", where or root, reason)
    return ({k: s.files for k, s in chosen.items()}, {k: s.sops for k, s in chosen.items()}, [], unlisted,
            ids_csv)


def _reason(e):
    """Why a study failed: a PipelineError's own message, else the exception's type and text."""
    return str(e) if isinstance(e, PipelineError) else f"{type(e).__name__}: {e}"


def predict_batch(ens, batch):
    """[(exam (9,), image (S,)) or the reason it failed] per study of ``batch``: one pass for
    all; if that fails, each study alone, so only the study that fails is lost."""
    try:
        preds = ens.predict_many([b["images"] for b in batch])
    except Exception as e:  # noqa: BLE001 - whatever the models raise on one study's input
        return [_reason(e)] if len(batch) == 1 else [predict_batch(ens, [b])[0] for b in batch]
    return [p if all(np.isfinite(x).all() for x in p) else "the models' output is not finite" for p in preds]


def predict_all(ens, studies, dirs, expected, num_workers, rank=0, acquisition=None):
    """{study: (sops, exam (9,), image (S,))} and [(study, reason)] for studies read from disk;
    a study that fails (reading or predicting) gets the label prior (``with_prior``). Each read
    study's scanner fields go into ``acquisition`` {study: fields}, if given.
    Workers decode the next studies while the models run; on a GPU consecutive studies go
    through the models together (``ens.group`` slices at a time, rsna_pe.infer.embed)."""
    loader = study_loader(ens, studies, dirs, num_workers)
    results, errors, batch = {}, [], []

    def flush():
        for item, pred in zip(batch, predict_batch(ens, batch)):
            if isinstance(pred, str):
                with_prior(ens, [(item["study"], pred)], expected, results, errors)
            else:
                results[item["study"]] = (item["sops"], *pred)
        batch.clear()

    for item in tqdm(loader, desc="inference", unit="study", total=len(studies), disable=rank > 0):
        study, err = item["study"], item["error"]
        if acquisition is not None:
            acquisition[study] = item["acquisition"]
        if err is None and sorted(item["sops"]) != sorted(expected[study]):
            err = f"{dirs[study]}: its slices' SOPInstanceUIDs do not match the csv"
        if err:
            with_prior(ens, [(study, err)], expected, results, errors)
            continue
        batch.append(item)
        if sum(len(b["sops"]) for b in batch) >= ens.group:
            flush()
    if batch:
        flush()
    return results, errors


def study_loader(ens, studies, dirs, num_workers):
    """The ``studies`` (StudyReader items) in order, decoded ahead by ``num_workers`` processes:
    torch's DataLoader (pinned memory on a GPU), or without torch for ONNX Runtime."""
    if getattr(ens, "runtime", "torch") != "torch":
        return read_ahead(StudyReader(studies, dirs, ens.reader.read), num_workers)
    import torch

    return torch.utils.data.DataLoader(StudyReader(studies, dirs, ens.read), batch_size=None,
                                       num_workers=num_workers, pin_memory=ens.device.type == "cuda",
                                       prefetch_factor=4 if num_workers else None)


def with_prior(ens, failed, expected, results, errors):
    """Each failed study [(study, reason)]: logged, listed in ``errors`` with its reason on one
    line, and predicted as the label prior (rsna_pe.infer.ensemble.Ensemble.prior_prediction)."""
    for study, reason in failed:
        reason = " ".join(str(reason).split())
        log.warning("study %s: %s; using the label prior", study, reason)
        errors.append((study, reason))
        results[study] = (expected[study], *ens.prior_prediction(len(expected[study])))


OUTPUTS = ("submission.csv", "errors.csv", "config.yaml", "acquisition.csv")


def _set_aside(out):
    """Overwrite: the old submission becomes submission.prev.csv, its companions go."""
    if (out / "submission.csv").is_file():
        (out / "submission.csv").replace(out / "submission.prev.csv")
    for name in OUTPUTS[1:]:
        (out / name).unlink(missing_ok=True)


def _up_to_date(cfg, sources, ids_csv, out, calibration=None):
    """The rerun rule (rank 0): True when a submission of this very record exists."""
    record = submission_record(cfg, sources, ids_csv, calibration)
    keep = provenance.guard(out, record, has_outputs(out, OUTPUTS), cfg["overwrite"], "submission",
                            clear=lambda: _set_aside(out))
    # a submission without its acquisition.csv is redone (same record: nothing cleared first)
    return keep and all((out / name).is_file() for name in ("submission.csv", "acquisition.csv"))


def _not_written(out, why):
    """A failed result leaves no submission.csv behind (the last good one, if any, is
    submission.prev.csv)."""
    if (out / "submission.csv").is_file():
        (out / "submission.csv").replace(out / "submission.prev.csv")
    prev = out / "submission.prev.csv"
    return PipelineError(f"{why}; no {out / 'submission.csv'} written" +
                         (f" (the previous one is {prev})" if prev.is_file() else ""))


def main(argv=None):
    cfg, _ = cli.parse(__doc__.splitlines()[0], default="inference.yml", argv=argv)
    if uses_onnx(cfg):  # ONNX Runtime on the CPU: one process, no process group, no torch
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("runtime=onnx runs in one process: start inference.py with python, not torchrun")
        return _infer(cfg, runtime.Dist(device=runtime.HOST))
    d = runtime.init(cfg["device"])
    try:
        return _infer(cfg, d)
    finally:
        runtime.cleanup()


def dicom_options(cfg, ens):
    """The ``dicom_*`` keys' options (None: ``dicom_out`` empty, nothing written); a bad UID
    root stops the run before any study is predicted."""
    if not cfg["dicom_out"]:
        return None
    return DicomOut(Path(cfg["dicom_out"]), cfg["dicom_uid_root"], cfg["deterministic_uids"],
                    cfg["dicom_key_images"], algorithm_identity(cfg, ens.sources))


def write_dicom(opts, ens, dirs, results, errors):
    """Each predicted study's objects into ``<folder>/<study>/``; a study that fails here is
    listed in ``errors`` (one line) and keeps its predictions, the others go on."""
    failed = {s for s, _ in errors}
    for study in sorted(s for s in results if s not in failed):
        folder = opts.folder / ids.checked(study, "StudyInstanceUID", f"study {ids.show(study)}")
        sops, exam, img = results[study]
        try:
            write_study(replace(opts, folder=folder), ens, dirs[study], sops, exam, img)
        except Exception as e:  # noqa: BLE001 - whatever one study's objects raise
            reason = " ".join(f"DICOM objects: {_reason(e)}".split())
            log.warning("study %s: %s", study, reason)
            errors.append((study, reason))


def _infer(cfg, d):
    onnx = uses_onnx(cfg)
    if d.device.type == "cpu" and not onnx:
        runtime.set_cpu_threads(cfg["num_workers"], d.world)
    data, out = Path(cfg["data_dir"]), Path(cfg["output_dir"])
    dirs, expected, refused, unlisted, ids_csv = read_inputs(cfg, data, out, d)
    mine = sorted(dirs)[d.rank::d.world]
    n_slices = sum(len(expected[s]) for s in mine)
    compile_ = runtime.resolve_compile(cfg["compile"], d.device.type, n_slices, cfg["compile_min_slices"])
    # ONNX Runtime's threads: by default the cores less the decoding workers, as torch's above
    models_cfg = {**cfg, "onnx_threads": cfg["onnx_threads"] or runtime.cpu_threads(cfg["num_workers"])} \
        if onnx else cfg
    ens = load_ensemble(models_cfg, d.device, compile=compile_)
    dicom = dicom_options(cfg, ens)
    if runtime.on_main(d, lambda: _up_to_date(cfg, ens.sources, ids_csv, out, ens.calibration_info)):
        log.info("%s is up to date", out / "submission.csv")
        return 0
    log.info("%d studies, %d images, %d model pairs on %s%s", len(expected), sum(map(len, expected.values())),
             len(ens.members), d.device,
             ", ONNX Runtime" if onnx else ", compiled" if compile_ else "")
    acquisition = {}
    results, errors = predict_all(ens, mine, dirs, expected, cfg["num_workers"], d.rank, acquisition)
    gathered = runtime.gather_objects((results, errors, acquisition), d)
    if not d.is_main:
        return 0
    results = {k: v for r, _, _ in gathered for k, v in r.items()}
    errors = [e for _, es, _ in gathered for e in es]
    acquisition = {k: v for _, _, a in gathered for k, v in a.items()}
    with_prior(ens, refused, expected, results, errors)
    errors += unlisted  # any tree: studies with no series to predict have no rows (no images)
    if dicom:
        write_dicom(dicom, ens, dirs, results, errors)

    study_ids = sorted(results)
    sops = [np.asarray(results[s][0]) for s in study_ids]
    sub = to_submission(study_ids, np.stack([results[s][1] for s in study_ids]), sops,
                        [results[s][2] for s in study_ids])
    problems = validate_submission(sub, study_ids, [np.asarray(expected[s]) for s in study_ids])
    if problems:
        raise _not_written(out, f"submission failed validation ({len(problems)} problems), first: {problems[0]}")
    save_config(cfg, out / "config.yaml")
    atomic_to_csv(pd.DataFrame(errors, columns=["StudyInstanceUID", "reason"]), out / "errors.csv")
    msg = (f"{len(errors)} of {len(study_ids)} studies unreadable, filled with the label prior "
           f"(see {out / 'errors.csv'})")
    if errors and cfg["on_error"] == "fail":
        raise _not_written(out, msg)
    atomic_to_csv(fields_table((s, acquisition.get(s)) for s in study_ids), out / "acquisition.csv")
    atomic_to_csv(sub, out / "submission.csv")
    log.info("wrote %s: %d rows, %d studies", out / "submission.csv", len(sub), len(study_ids))
    if errors:
        log.warning(msg)
    return 0


if __name__ == "__main__":
    cli.run(main)
