"""CNN embeddings of whole series: chunked, mixed precision, channels_last, in inference mode.

Used by stage 5 (dump_embeddings) and stage 7 (inference), so both run the backbone the same way.
"""
import numpy as np
import torch

from .runtime import amp_settings, autocast


class Embedder:
    """Pooled backbone features (S, D) float32 for a uint8 RGB stack (S, 3, H, W) of any length."""

    def __init__(self, model, device, chunk=64, amp=True, channels_last=True, compile=False, tta_flip=False):
        # bf16 where the GPU has it, else fp16; fp32 on CPU.
        self.device, self.chunk, self.dtype = device, chunk, amp_settings(amp, device)[0]
        self.channels_last = channels_last
        model = model.to(device).eval()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.features = torch.compile(model.features, dynamic=True) if compile else model.features
        self.tta_flip = tta_flip

    def to_device(self, imgs):
        """uint8 (S, 3, H, W) numpy or tensor -> tensor on the model's device, copied once
        (through pinned memory on GPU) so that several models can share it."""
        x = torch.as_tensor(imgs)
        if self.device.type == "cuda" and x.device.type == "cpu":
            x = x.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device)

    @torch.inference_mode()
    def run(self, imgs, fn=None):
        """Apply ``fn`` (default: features) chunk by chunk to a uint8 stack (S, 3, H, W), numpy
        or tensor (on the device already, see to_device); returns float32 numpy (S, ...)."""
        fn = fn or self.features
        x_all = self.to_device(imgs)
        outs = []
        for start in range(0, len(x_all), self.chunk):
            x = x_all[start:start + self.chunk]
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.dtype):
                y = fn(x)
                if self.tta_flip:
                    y = (y + fn(torch.flip(x, dims=[3]))) / 2
            outs.append(y.float())
        return torch.cat(outs).cpu().numpy() if outs else np.zeros((0,), np.float32)
