"""DataLoaders of the training engine: resumable shuffling, validation shards, worker set-up."""
import torch


class ResumableSampler(torch.utils.data.DistributedSampler):
    """DistributedSampler (a group of one without torchrun) whose epoch can start part-way,
    so a resumed run sees the rest of the interrupted epoch in the same order."""

    skip = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip:])

    def __len__(self):
        return self.num_samples - self.skip


class ShardSampler(torch.utils.data.Sampler):
    """Every ``world``-th index from ``rank``, no padding: validation sees each item once."""

    def __init__(self, n, rank=0, world=1):
        self.idx = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.idx)

    def __len__(self):
        return len(self.idx)


def worker_init(worker_id):
    info = torch.utils.data.get_worker_info()
    hook = getattr(info.dataset, "worker_init", None)
    if hook is not None:
        hook(info.seed)
    else:
        torch.set_num_threads(1)


def make_loader(ds, batch_size, sampler, num_workers, collate_fn, pin, drop_last, seed=0):
    # Own generator: making an iterator then draws worker seeds from it, not from the global
    # RNG, so dropout etc. continue identically after a resume.
    kw = dict(generator=torch.Generator().manual_seed(seed))
    if num_workers > 0:
        kw.update(persistent_workers=True, prefetch_factor=4, worker_init_fn=worker_init)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler,
                                       num_workers=num_workers, collate_fn=collate_fn,
                                       pin_memory=pin, drop_last=drop_last, **kw)
