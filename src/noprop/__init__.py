"""noprop: train neural networks the NoProp way (Li, Teh, Pascanu, arXiv 2503.24322)."""

__version__ = "0.1.0"

from .config import RunConfig, make_config  # noqa: E402
from .data import load_dataset  # noqa: E402
from .errors import NoPropError  # noqa: E402
from .methods import METHODS, Backprop, Method, NoPropDT, build_method  # noqa: E402
from .schedules import CosineSchedule, DiscreteSchedule  # noqa: E402
from .training import Trainer, evaluate, evaluate_run, train  # noqa: E402

__all__ = [
    "METHODS",
    "Backprop",
    "CosineSchedule",
    "DiscreteSchedule",
    "Method",
    "NoPropDT",
    "NoPropError",
    "RunConfig",
    "Trainer",
    "__version__",
    "build_method",
    "evaluate",
    "evaluate_run",
    "load_dataset",
    "make_config",
    "train",
]
