"""Stage 6's data: one item per series from the embeddings stage 5 dumped (docs/layout.md),
padded into batches by ``collate``."""
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..core import paths
from ..core.errors import InputFileError, PipelineError
from ..core.labels import LABELS, N_EXAM


class EmbeddingDataset(Dataset):
    """One item per series: its dumped embeddings (S, D) in z order, labels (S, 10), SOP ids."""

    def __init__(self, root, series):
        self.root = Path(root)
        self.series = list(series)  # [(study, series), ...]
        missing = [s for s in self.series if not self.file(s).is_file()]
        if missing:
            raise PipelineError(f"{len(missing)} series have no dumped embeddings, e.g. "
                                f"{self.file(missing[0])} (run dump_embeddings for this CNN run and fold)")

    def file(self, item):
        return paths.series_file(self.root, *item)

    def __len__(self):
        return len(self.series)

    def __getitem__(self, i):
        study, series = self.series[i]
        path = self.file(self.series[i])
        try:
            with np.load(path, allow_pickle=False) as z:
                emb, labels, sop = z["embeddings"], z["labels"], z["sop"]
        except (OSError, KeyError, ValueError) as e:
            raise InputFileError(path, f"unreadable embeddings ({type(e).__name__}: {e})") from None
        if emb.ndim != 2 or len(emb) == 0 or labels.shape != (len(emb), len(LABELS)) or len(sop) != len(emb):
            raise InputFileError(path, f"expected embeddings (S, D), labels (S, {len(LABELS)}), "
                                       f"sop (S,) with S > 0; got {emb.shape}, {labels.shape}, {sop.shape}")
        return {"emb": torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32)),
                "labels": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32)),
                "sop": sop.astype(str), "study": study, "series": series}


def collate(items):
    """Pad to the longest series in this batch; keep lengths, SOP and study ids."""
    lengths = torch.tensor([len(it["emb"]) for it in items], dtype=torch.int64)
    steps, dim = int(lengths.max()), items[0]["emb"].shape[1]
    emb = torch.zeros(len(items), steps, dim, dtype=torch.float32)
    image_labels = torch.zeros(len(items), steps, dtype=torch.float32)
    for i, it in enumerate(items):
        n = len(it["emb"])
        emb[i, :n] = it["emb"]
        image_labels[i, :n] = it["labels"][:, -1]
    # Exam labels repeat on every slice of a study; take the first row's.
    exam_labels = torch.stack([it["labels"][0, :N_EXAM] for it in items])
    return {"emb": emb, "lengths": lengths, "image_labels": image_labels,
            "exam_labels": exam_labels, "sop": [it["sop"] for it in items],
            "study": [it["study"] for it in items], "series": [it["series"] for it in items]}
