"""Per-series work in parallel processes, with a progress bar and per-item failures kept."""
import logging
import multiprocessing as mp
import os
import traceback

from tqdm import tqdm

from .errors import BadFileError, PipelineError
from .io import atomic_to_csv

log = logging.getLogger(__name__)

# Workers start from a clean server process, not from a copy of the caller: a caller that has
# run torch (its OpenMP threads) or holds other threads' locks can make a forked worker hang.
# The cost is one import of the stage's module per worker (well under a second).
START_METHOD = "forkserver"


def n_workers(workers):
    """0 or None means all cores."""
    return workers if workers and workers > 0 else (os.cpu_count() or 1)


def _init_worker():
    import cv2  # the image library, only where image work runs: this module stays in the core
    cv2.setNumThreads(1)  # one process per core already; cv2's own threads would oversubscribe


class _Call:
    """Picklable wrapper: returns (item, result, None) or (item, None, (file, reason))."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, item):
        try:
            return item, self.fn(item), None
        except BadFileError as e:  # DICOM and other input files: listed by file
            return item, None, (e.path, e.reason)
        except Exception as e:  # log and carry on: one bad series must not stop the others
            log.debug(traceback.format_exc())
            return item, None, ("", f"{type(e).__name__}: {e}")


def imap(fn, items, workers=0, desc="", unit="series"):
    """Yield ``(item, result, error)`` for each item, in completion order."""
    items = list(items)
    workers = min(n_workers(workers), max(len(items), 1))
    bar = tqdm(total=len(items), desc=desc, unit=unit, dynamic_ncols=True)
    call = _Call(fn)
    try:
        if workers == 1:
            _init_worker()
            for item in items:
                yield call(item)
                bar.update()
        else:
            with mp.get_context(START_METHOD).Pool(workers, initializer=_init_worker) as pool:
                for out in pool.imap_unordered(call, items, chunksize=1):
                    yield out
                    bar.update()
    finally:
        bar.close()


class SeriesFailures(PipelineError):
    """Some series failed; ``done`` still holds the ``(item, result)`` of those that worked."""

    def __init__(self, message, done):
        super().__init__(message)
        self.done = done


ERROR_COLUMNS = ["StudyInstanceUID", "SeriesInstanceUID", "file", "reason"]


def _where(file, reason):
    """'file: reason', or the reason alone for a failure no file is to blame for (an unsafe id)."""
    return f"{file}: {reason}" if file else reason


def run_series(fn, items, key, errors_csv, workers=0, desc=""):
    """Run ``fn`` over series ``items`` in parallel; return the successful ``(item, result)``.

    Failures are logged, listed in ``errors_csv`` (study, series, file, reason; rewritten on
    every run, so it holds the latest failures only), and once every other series is done a
    PipelineError summarises them. ``key(item)`` gives (study, series).
    """
    import pandas as pd  # heavy: only the list of failures needs it

    done, errors = [], []
    for item, result, err in imap(fn, items, workers, desc=desc):
        if err:
            log.warning("series %s/%s failed: %s", *key(item), _where(*err))
            errors.append((*key(item), *err))
        else:
            done.append((item, result))
    atomic_to_csv(pd.DataFrame(errors, columns=ERROR_COLUMNS), errors_csv)
    if errors:
        raise SeriesFailures(f"{len(errors)} of {len(items)} series failed, first "
                             f"{_where(*errors[0][2:])} (all listed in {errors_csv})", done)
    return done
