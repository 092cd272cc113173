"""CNN embeddings of whole series: chunked, mixed precision, channels_last, in inference mode.

Used by stage 5 (dump_embeddings) and stage 7 (inference), so both run the backbone the same way.
On a GPU every forward pass has exactly ``chunk`` slices: the last chunk is padded with copies
of its last slice and the padding dropped from the output, so cudnn's plans and a compiled
graph (``dynamic=False``) serve every series; consecutive series share one pass (``group``)
so that only the group's last chunk is padded. On CPU nothing is padded or grouped.
"""
import numpy as np
import torch

from ..core.errors import ConfigError
from ..core.runtime import amp_settings, autocast

# Series of one pass on a GPU: at least this many chunks' worth of slices (the padding of the
# last chunk then costs about 1/32 of the work on average).
GROUP_CHUNKS = 16


def to_device(x, device):
    """A tensor or numpy array on ``device``; from the host through pinned memory on a GPU,
    without waiting for the copy (the caching host allocator keeps the pinned block alive)."""
    x = torch.as_tensor(x)
    if device.type == "cuda" and x.device.type == "cpu":
        if not x.is_pinned():
            x = x.pin_memory()
        return x.to(device, non_blocking=True)
    return x.to(device)


class Embedder:
    """The CNN's ``embedding`` (S, D) float32 for a uint8 RGB stack (S, 3, H, W) of any length."""

    def __init__(self, model, device, chunk=64, amp=True, channels_last=True, compile=False, tta_flip=False,
                 pad=None):
        # bf16 where the GPU has it, else fp16; fp32 on CPU.
        self.device, self.chunk, self.dtype = device, chunk, amp_settings(amp, device)[0]
        self.channels_last = channels_last
        # Fixed shapes: on by default on a GPU only (CPU results stay exactly as they were).
        self.pad = device.type == "cuda" if pad is None else bool(pad)
        self.group = GROUP_CHUNKS * chunk if self.pad else 0
        if self.pad and device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # one input shape: the autotuned plans are reused
        model = model.to(device).eval()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        if tta_flip and getattr(model, "logits_in_embedding", False):
            # the mirrored slice's left/right logits are the other side's: averaging mixes them
            raise ConfigError("tta_flip cannot be used with a CNN whose embedding carries its "
                              "exam logits (model.exam_targets.in_embedding); set tta_flip=false")
        self.features = torch.compile(model.embedding, dynamic=not self.pad) if compile else model.embedding
        self.tta_flip = tta_flip

    def to_device(self, imgs):
        """uint8 (S, 3, H, W) numpy or tensor -> tensor on the model's device, copied once
        (through pinned memory on GPU) so that several models can share it."""
        return to_device(imgs, self.device)

    def stack_on_device(self, stacks):
        """[uint8 (S_i, 3, H, W)] -> their concatenation on the device, one copy each."""
        if len(stacks) == 1:
            return self.to_device(stacks[0])
        first = torch.as_tensor(stacks[0])
        out = torch.empty((sum(len(s) for s in stacks), *first.shape[1:]), dtype=first.dtype, device=self.device)
        start = 0
        for s in stacks:
            s = torch.as_tensor(s)
            cuda_from_host = self.device.type == "cuda" and s.device.type == "cpu"
            out[start:start + len(s)].copy_(s.pin_memory() if cuda_from_host and not s.is_pinned() else s,
                                            non_blocking=cuda_from_host)
            start += len(s)
        return out

    def _padded(self, x):
        """A chunk of exactly ``self.chunk`` slices (the last one repeated), channels_last."""
        if self.pad and len(x) < self.chunk:
            x = torch.cat([x, x[-1:].expand(self.chunk - len(x), *x.shape[1:])])
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @torch.inference_mode()
    def embed(self, imgs):
        """uint8 (S, 3, H, W), numpy or tensor (on the device already, see to_device) ->
        float32 (S, D) on the device; nothing waits for the GPU."""
        x_all = self.to_device(imgs)
        outs = []
        for start in range(0, len(x_all), self.chunk):
            x = x_all[start:start + self.chunk]
            n = len(x)
            x = self._padded(x)
            with autocast(self.device, self.dtype):
                y = self.features(x)
                if self.tta_flip:
                    y = (y + self.features(torch.flip(x, dims=[3]))) / 2
            outs.append(y[:n].float())
        if not outs:
            return torch.zeros((0,), dtype=torch.float32, device=self.device)
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def embed_many(self, stacks):
        """[uint8 (S_i, 3, H, W)] -> [float32 (S_i, D) on the device]: one pass over their
        concatenation, so only its last chunk is padded."""
        feats = self.embed(self.stack_on_device(stacks))
        return list(feats.split([len(s) for s in stacks])) if len(stacks) > 1 else [feats]

    def run(self, imgs):
        """uint8 (S, 3, H, W) -> float32 numpy (S, D), copied to the host once."""
        return self.run_many([imgs])[0]

    def run_many(self, stacks):
        """[uint8 (S_i, 3, H, W)] -> [float32 numpy (S_i, D)]: one pass, one copy to the host."""
        return self.start_many(stacks)()

    def start_many(self, stacks):
        """``run_many`` without waiting: queues the pass and the copy of its embeddings to the
        host, and returns the function that waits for them and returns the list. Meanwhile the
        host can save the previous pass and gather the next one while the GPU works."""
        feats = self.embed(self.stack_on_device(stacks))
        lengths = [len(s) for s in stacks]
        done = None
        if self.device.type == "cuda":
            feats = feats.to("cpu", non_blocking=True)  # into pinned memory
            done = torch.cuda.Event()
            done.record()

        def finish():
            if done is not None:
                done.synchronize()
            out = feats.cpu().numpy()
            return np.split(out, np.cumsum(lengths)[:-1]) if len(lengths) > 1 else [out]
        return finish
