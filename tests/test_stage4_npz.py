"""Stage 4's npz: the series' JPEG files byte for byte, decoded exactly as training reads them."""
import numpy as np
import pandas as pd
import pytest

from rsna_pe.core import paths
from rsna_pe.core.errors import PipelineError
from rsna_pe.core.labels import LABELS
from rsna_pe.data.images import NPZ_FORMAT, jpeg_name, read_jpeg, read_npz_images
from rsna_pe.records import provenance
from support.prep_data import SIZE


def test_npz_holds_the_jpeg_files_and_decodes_like_read_jpeg(reference):
    data = reference / "data"
    fold = pd.read_csv(paths.fold_csv(data, SIZE), dtype={"StudyInstanceUID": str, "SeriesInstanceUID": str,
                                                         "SOPInstanceUID": str})
    digest = provenance.digest(provenance.read_record(paths.npz_dir(data, SIZE)))
    groups = list(fold.groupby(["StudyInstanceUID", "SeriesInstanceUID"]))
    assert groups
    for (study, series), g in groups:
        g = g.sort_values("z_pos_order")
        with np.load(paths.series_file(paths.npz_dir(data, SIZE), study, series)) as z:
            assert sorted(z.files) == ["format", "jpeg", "jpeg_offsets", "labels", "record", "sop"]
            assert str(z["format"]) == NPZ_FORMAT and str(z["record"]) == digest
            assert list(z["sop"]) == g.SOPInstanceUID.tolist()
            assert np.array_equal(z["labels"], g[list(LABELS)].to_numpy(np.float32))
            buf, off = z["jpeg"], z["jpeg_offsets"]
            imgs = read_npz_images(z, "npz")
        assert buf.dtype == np.uint8 and off.dtype == np.int64 and off[0] == 0 and off[-1] == len(buf)
        assert imgs.dtype == np.uint8 and imgs.shape == (len(g), 3, SIZE, SIZE)
        for k, sop in enumerate(g.SOPInstanceUID):
            f = paths.jpeg_dir(data, SIZE) / study / series / jpeg_name(k, sop)
            assert buf[off[k]:off[k + 1]].tobytes() == f.read_bytes()
            assert np.array_equal(imgs[k], read_jpeg(f).transpose(2, 0, 1))


def test_npz_of_the_old_decoded_layout_is_refused_in_one_line(tmp_path):
    old = tmp_path / "old.npz"
    np.savez(old, imgs=np.zeros((2, 3, 4, 4), np.uint8), labels=np.zeros((2, 10), np.float32),
             sop=np.array(["a", "b"]))
    with np.load(old) as z, pytest.raises(PipelineError) as e:
        read_npz_images(z, old)
    msg = str(e.value)
    assert str(old) in msg and "imgs" in msg and NPZ_FORMAT in msg and "overwrite=true" in msg
    assert "\n" not in msg
