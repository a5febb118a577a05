"""What the profiling scripts (train_profile.py, engine_profile.py) share: the activities to record and
each event's own time, counted once.

The profiler gives an op (aten::addmm) the device time of the kernels it launched and lists those
kernels too: on a GPU only the device's own events (kernels, copies) are counted, each once. A user
annotation (the ProfilerStep#N a scheduled profiler records, any record_function) has a device-side
twin spanning the kernels of its window, idle gaps included: it is left out. On a CPU the ops are
counted, by their self CPU time.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.autograd import DeviceType


def activities(on_gpu: bool) -> list[torch.profiler.ProfilerActivity]:
    return [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on_gpu else [])


def own_time(events, on_gpu: bool) -> tuple[list, Callable[[object], float]]:
    """(the events to count, each one's own time in µs): the device's events on a GPU, the ops on a CPU."""
    if on_gpu:
        return ([event for event in events
                 if event.device_type == DeviceType.CUDA and not getattr(event, "is_user_annotation", False)],
                lambda event: event.self_device_time_total)
    return list(events), lambda event: event.self_cpu_time_total
