"""The device a model runs on, its health and memory, and the CPU threads it gets."""

from __future__ import annotations

import torch


def reserve_cpu_threads() -> int:
    """Leave the calling thread a single intra-op CPU thread; return how many it had.

    OpenMP keeps one worker team per thread that runs parallel regions. Once the thread
    that loads the model has a team of its own, the model runs at about half speed on
    another thread (measured on 2 cores: 0.47 s against 0.28 s per chunk), because the
    two teams contend for the same cores. So the process's main thread (loading, the event
    loop) keeps one thread, and the thread that runs the model gets them all
    (`Engine.bind_thread`). Call it before any torch work.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    return threads


def pick_device(name: str = "auto") -> torch.device:
    """ "auto" means CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def probe(device: torch.device) -> None:
    """Raise if the device is broken: a sticky CUDA error fails every later call, so the
    server must fail over. Nothing to check off CUDA. Call it on the thread that runs the
    model."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_bytes(device: torch.device) -> dict[str, int]:
    """The device memory torch holds ("allocated", "reserved"); empty off CUDA, where the
    process's own memory says it all."""
    if device.type != "cuda":
        return {}
    return {
        "allocated": torch.cuda.memory_allocated(device),
        "reserved": torch.cuda.memory_reserved(device),
    }


def inference_only() -> int:
    """Set up a serving process before any torch work: no autograd on this thread, and its
    CPU threads reserved for the thread that runs the model (`reserve_cpu_threads`); returns
    how many that thread may claim."""
    torch.set_grad_enabled(False)
    return reserve_cpu_threads()
