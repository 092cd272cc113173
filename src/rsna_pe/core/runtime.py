"""The runtime every stage shares: device, CPU threads, precision, seeding and the process group.

Process group: a plain ``python`` run is a group of one.

``torchrun --nproc_per_node=N`` sets RANK / WORLD_SIZE / LOCAL_RANK; we then use NCCL on
GPUs and Gloo on CPUs. Only rank 0 writes files and logs metrics.

torch is imported where it is used, not with this module: inference with ONNX Runtime
(rsna_pe.infer.onnx_runtime) runs through here on machines without torch.
"""
import contextlib
import datetime
import hashlib
import os
import random
from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError, PipelineError


@dataclass(frozen=True)
class HostDevice:
    """The CPU as the device of a run without torch (ONNX Runtime): ``type`` is what the
    stages read of a torch.device."""
    type: str = "cpu"

    def __str__(self):
        return self.type


HOST = HostDevice()


def _cpu_device():
    import torch
    return torch.device("cpu")


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: object = field(default_factory=_cpu_device)  # a torch.device, or HOST

    @property
    def enabled(self):
        return self.world > 1

    @property
    def is_main(self):
        return self.rank == 0


def pick_device(name="auto", local_rank=0):
    """``auto`` -> the local GPU if there is one, else CPU; ``cuda`` without a GPU is an error."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PipelineError("train.device=cuda but no CUDA GPU is visible")
        if name == "cuda":
            name = f"cuda:{local_rank}"
    return torch.device(name)


def init(device_name="auto"):
    """Join the process group when launched by torchrun; return this process's ``Dist``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    import torch
    import torch.distributed as dist

    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        # Validation and checkpoint writes on rank 0 can take minutes: be patient.
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=60),
                                device_id=device if device.type == "cuda" else None)
    elif device.type == "cuda":
        torch.cuda.set_device(device)
    return Dist(rank, world, local_rank, device)


def _dist():
    import torch.distributed as dist
    return dist


def cleanup():
    dist = _dist()
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(d):
    if d.enabled:
        _dist().barrier()


def gather_objects(obj, d):
    """Every rank's ``obj`` as a list (rank order), on every rank."""
    if not d.enabled:
        return [obj]
    out = [None] * d.world
    _dist().all_gather_object(out, obj)
    return out


def broadcast_object(obj, d, src=0):
    """Rank ``src``'s ``obj`` on every rank."""
    if not d.enabled:
        return obj
    box = [obj]
    _dist().broadcast_object_list(box, src=src)
    return box[0]


def on_main(d, fn):
    """``fn()`` on rank 0 only; every rank gets its result, or raises its error (no rank is
    left waiting for one that stopped)."""
    result = error = None
    if d.is_main:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
            error = e
    result, message = broadcast_object((result, None if error is None else str(error)), d)
    if error is not None:
        raise error
    if message is not None:
        raise PipelineError(message)
    return result


def weights_digest(named_tensors):
    """Short sha256 of named tensors (e.g. ``model.named_parameters()``), to compare ranks."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(named_tensors, key=lambda kv: kv[0]):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def broadcast_buffers(model, d, src=0):
    """Copy rank ``src``'s buffers (BatchNorm running stats) to every rank. DDP syncs them
    only at the start of a training forward, so after the last step each rank holds its own;
    validation and checkpoints must all use rank 0's."""
    if not d.enabled:
        return
    for b in model.buffers():
        _dist().broadcast(b.data, src=src)


def mean_across(value, d):
    """Mean of a float over ranks."""
    if not d.enabled:
        return float(value)
    import torch

    t = torch.tensor([float(value)], dtype=torch.float64,
                     device=d.device if d.device.type == "cuda" else "cpu")
    _dist().all_reduce(t)
    return float(t.item()) / d.world


# ----------------------------------------------------------------------------- threads, precision, seeds
def seed_everything(seed):
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def amp_settings(amp, device):
    """(autocast dtype or None, needs GradScaler): bf16 where the GPU has it, else fp16 with a
    scaler; CPU trains in fp32."""
    if not amp or device.type != "cuda":
        return None, False
    import torch

    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, False
    return torch.float16, True


COMPILE_CHOICES = ("auto", "true", "false")


def resolve_compile(value, device_type, n_items=None, min_items=0):
    """A config's ``compile`` (true, false or auto) -> whether to torch.compile. ``auto``: on for
    CUDA only, and when ``n_items`` is given (slices a dump or inference will embed) only if
    there are at least ``min_items`` of them to repay the warm-up; CPU runs stay uncompiled."""
    text = str(value).strip().lower()
    if text not in COMPILE_CHOICES:
        raise ConfigError(f"compile={value}: choose from {', '.join(COMPILE_CHOICES)}")
    if text != "auto":
        return text == "true"
    return device_type == "cuda" and (n_items is None or n_items >= min_items)


def autocast(device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=device.type, dtype=dtype)


def cpu_threads(num_workers=0, local_world=1):
    """This process's compute threads on a CPU: the cores less the loader workers, shared by
    the ranks on this machine. RSNA_PE_CORES (set by the wrappers when JOBS runs share a
    machine) is this run's share of the cores; an explicit OMP_NUM_THREADS wins over everything."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    if os.environ.get("RSNA_PE_CORES", "").isdigit() and int(os.environ["RSNA_PE_CORES"]) > 0:
        cores = int(os.environ["RSNA_PE_CORES"])
    else:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 1
    return max(1, (cores - num_workers) // max(1, local_world))


def set_cpu_threads(num_workers, local_world=1):
    """CPU training and inference: torch's threads as ``cpu_threads`` counts them. OpenMP
    threads that outnumber free cores spin against each other (steps 10x slower)."""
    if "OMP_NUM_THREADS" in os.environ:
        return  # torch read it itself
    import torch

    torch.set_num_threads(cpu_threads(num_workers, local_world))


def rng_state():
    import torch

    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        # plain types/tensors only, so torch.load(weights_only=True) accepts the checkpoint
        "numpy": [torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": random.getstate(),
    }


def set_rng_state(s):
    import torch

    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(s["cuda"])
    keys, pos, has_gauss, gauss = s["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), int(pos), int(has_gauss), gauss))
    v, internal, g = s["python"]
    random.setstate((v, tuple(internal), g))
