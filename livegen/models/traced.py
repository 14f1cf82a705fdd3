"""The UNet as TorchScript traces, one per input shape, for the CPU.

On a CPU a small UNet's time goes largely to the Python of diffusers' forward (module calls,
checks, dict building): the embedded model's 1-step UNet took 21 ms eager and 12.5 ms traced on
the 2-core CPU. A trace is made on the first call with a new image size (the engine's warm-up makes one for
every served size, so none is made after ready) and replays the same tensor operations. The batch
size stays symbolic in the trace (tests compare batch sizes against the eager UNet), so one trace
serves every batch; anything else shape-specific gets a trace of its own. (`torch.jit.freeze` with
`optimize_for_inference` was slower here: 17 ms.)
"""

from __future__ import annotations

import warnings

import torch


class _Forward(torch.nn.Module):
    """The UNet's forward with its conditioning as positional tensors, which tracing needs."""

    def __init__(self, unet: torch.nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.unet = unet
        self.names = names

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor:
        kwargs: dict = {}
        for name, tensor in zip(self.names, tensors, strict=True):
            if name.startswith("added_cond_kwargs."):  # SDXL's micro-conditioning dict
                kwargs.setdefault("added_cond_kwargs", {})[name.partition(".")[2]] = tensor
            else:
                kwargs[name] = tensor
        return self.unet(sample, timestep, **kwargs, return_dict=False)[0]


class TracedUNet:
    """Called like the UNet (`unet(sample, t, **cond, return_dict=False)[0]`), run by traces."""

    def __init__(self, unet: torch.nn.Module):
        self.unet = unet
        self.traces: dict[tuple, torch.jit.ScriptModule] = {}

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, return_dict: bool = False,
                 **cond: torch.Tensor | dict[str, torch.Tensor]) -> tuple[torch.Tensor]:
        flat = {f"{key}.{k}" if isinstance(value, dict) else key: v
                for key, value in cond.items() for k, v in (value.items() if isinstance(value, dict) else [(key, value)])}
        names = tuple(sorted(flat))
        tensors = [flat[name] for name in names]
        timestep = torch.as_tensor(timestep, device=sample.device)
        key = (names, *((tuple(t.shape[1:]), t.dtype) for t in (sample, timestep, *tensors)),
               sample.is_contiguous(memory_format=torch.channels_last))
        trace = self.traces.get(key)
        if trace is None:
            with warnings.catch_warnings():  # diffusers' shape checks become constants: expected
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                trace = torch.jit.trace(_Forward(self.unet, names), (sample, timestep, *tensors), check_trace=False)
            self.traces[key] = trace
        return (trace(sample, timestep, *tensors),)
