"""Hard limits on what a file from someone else can make noprop allocate (SECURITY.md).

A config, an exported model or an image may come from anyone. Every number in it that sizes an
allocation or a loop is checked against a limit here *before* anything is built, so the worst a
hostile file can do is fail with a one-line error:

* :data:`MAX_CONFIG_VALUES`: run-config fields (``config.json`` of a run or an export, the config
  inside ``checkpoint.pt``, a ``--config`` TOML file, flags). Each limit is far above every value
  the paper or BENCHMARKS.md uses; ``T`` (blocks built, each a module) is the tightest, because even
  a model skeleton on the ``meta`` device costs about 0.2 MB of Python objects per block.
* :data:`MAX_JSON_BYTES`, :data:`MAX_SAFETENSORS_HEADER_BYTES`: small text parsed whole.
* :func:`image_limits`: pixels and bytes of one image file, overridable with the environment
  variables ``NOPROP_MAX_IMAGE_PIXELS`` and ``NOPROP_MAX_IMAGE_BYTES`` (for big scans resized down).
* :data:`MAX_CLASSES`, :data:`MAX_CHANNELS`: the labels and image shape of your own data.

The limits are not configurable from a file, only by the person running noprop.
"""

from __future__ import annotations

import os

from .errors import ConfigError

#: run-config field → the largest value accepted (the field's own lower bound is checked elsewhere)
MAX_CONFIG_VALUES: dict[str, int] = {
    "T": 1000,  # blocks of dt / backprop (the paper: 10)
    "inference_steps": 100_000,  # ct/fm/adjoint (the paper: 1000)
    "val_inference_steps": 100_000,
    "adjoint_steps": 100_000,
    "t_samples": 1024,
    "gamma_width": 16_384,  # ct: hidden width of the γ network
    "embed_dim": 16_384,
    "width": 16_384,
    "heads": 1024,
    "block_layers": 64,
    "context": 65_536,
    "batch_size": 1 << 20,
    "eval_batch_size": 1 << 20,
    "threads": 4096,  # torch CPU threads, each an OS thread
}
#: text: transformer layers in all blocks together (``T`` × ``block_layers``), like ``T`` for images
MAX_TOTAL_LAYERS = MAX_CONFIG_VALUES["T"]

#: ``config.json``, ``normalisation.json``, ``summary.json``: a few kB when noprop writes them
MAX_JSON_BYTES = 4 << 20
#: the JSON header of ``model.safetensors`` (names, dtypes, shapes, offsets): ~100 bytes per tensor
MAX_SAFETENSORS_HEADER_BYTES = 32 << 20

#: one image file: decoded pixels (width × height) and bytes on disk
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_IMAGE_BYTES = 64 << 20
IMAGE_PIXELS_ENV, IMAGE_BYTES_ENV = "NOPROP_MAX_IMAGE_PIXELS", "NOPROP_MAX_IMAGE_BYTES"
#: your own data (``--dataset folder|npy``, and the ``data.json`` recording them): classes and the
#: channels of one image (its height × width is bounded by the image pixel limit)
MAX_CLASSES = 1 << 16
MAX_CHANNELS = 64


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{name} must be a positive integer (got {text!r})")
    return value


def image_limits() -> tuple[int, int]:
    """(max pixels, max bytes) of one image file: the defaults above or the environment's."""
    return (
        _env_int(IMAGE_PIXELS_ENV, MAX_IMAGE_PIXELS),
        _env_int(IMAGE_BYTES_ENV, MAX_IMAGE_BYTES),
    )
