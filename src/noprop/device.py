"""Device names: ``--device auto|cpu|cuda|cuda:N`` → :class:`torch.device`."""

from __future__ import annotations

import re

import torch

from .errors import ConfigError

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device(name: str) -> None:
    """``--device`` must be auto, cpu, cuda or cuda:N (other torch devices are not supported)."""
    if not isinstance(name, str) or not DEVICE_PATTERN.fullmatch(name):
        raise ConfigError(f"unknown --device {name!r}; use auto, cpu, cuda or cuda:N")


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; an unavailable CUDA is a one-line error."""
    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but CUDA is not available")
    return device
