"""Training options: optimiser, order of the block updates, seed, device, parallel layout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..arguments import SECONDS
from ..device import check_device
from ..options import at_least, check_choices, flag, non_negative, positive
from ..precision import Precision, check_precision

Optimizer = Literal["auto", "adamw", "adam"]
Order = Literal["blocks", "interleaved", "random"]
LRSchedule = Literal["constant", "cosine"]
# --parallel (parallel/): none, block-parallel DT under torchrun, the fused vmap step of DT (one
# process), data parallelism under torchrun (every method)
ParallelMode = Literal["none", "blocks", "fused", "data"]


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    epochs: int = 30
    """training epochs (a DT epoch is one pass over the data per block)"""
    batch_size: int = 128
    """mini-batch size"""
    lr: float = 1e-3
    """learning rate"""
    lr_schedule: LRSchedule = "constant"
    """constant (the paper), or cosine: from --lr down to 0.1·--lr over the run (each block over its
    own steps, the shared head and W_Embed over all steps)"""
    weight_decay: float = 1e-3
    """weight decay (decoupled for AdamW, L2 for Adam)"""
    optimizer: Optimizer = "auto"
    """auto (AdamW for dt/backprop/adjoint, Adam for ct/fm), adamw, adam"""
    order: Order = "blocks"
    """blocks (Algorithm 1: blocks outer, batches inner), interleaved (every block on each batch) or
    random (one block drawn per batch: DiffusionBlocks' order; an epoch is one pass in all)"""
    seed: int = 0
    """seed of the model, the validation split, the shuffles and the noise"""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N"""
    patience: int | None = None
    """stop after N epochs without a better validation score on the task's metric (accuracy; bits
    per byte for text)"""
    eval_batch_size: int = 1000
    """batch size of validation and test inference"""
    channels_last: bool = True
    """the task's fast memory layout (channels-last images for convolutions; timings in
    BENCHMARKS.md)"""
    offload_blocks: bool = False
    """dt, --order blocks: keep only the block being trained (and its optimiser state) on the GPU"""
    parallel: ParallelMode = "none"
    """none; blocks (DT, under torchrun: each rank trains its blocks); fused (DT, one process, all
    blocks per step via vmap; needs --order interleaved); data (under torchrun, any method)"""
    dist_timeout_s: float = 300.0
    """seconds a rank waits for the others before the parallel run fails"""
    tensorboard: bool = False
    """write TensorBoard event files to RUN/tensorboard (needs the extra [tb]: pip install noprop[tb])"""
    precision: Precision = "32"
    """32 (the paper), bf16-mixed or 16-mixed (Lightning's names): the networks under autocast in
    bfloat16/float16, float32 weights, optimiser states, schedules and losses; 16-mixed adds loss
    scaling, one scaler per block (overflowing steps are skipped and counted). Fixed for a run:
    --resume keeps it"""
    test_curve: bool = False
    """also evaluate the test split after every epoch (default inference) and record test_accuracy in
    metrics.jsonl, for accuracy-vs-time curves; never used for model selection"""
    threads: int | None = None
    """torch CPU threads (default: all cores, or those other jobs left free at start-up). The numbers
    depend on it; config.json records the count used and --resume keeps it unless given again"""

    def __post_init__(self) -> None:
        check_choices(self)
        at_least("epochs", self.epochs)
        at_least("batch_size", self.batch_size)
        positive("lr", self.lr)
        non_negative("weight_decay", self.weight_decay)
        at_least("seed", self.seed, 0)
        check_device(self.device)
        check_precision(self.precision)
        if self.patience is not None:
            at_least("patience", self.patience)
        at_least("eval_batch_size", self.eval_batch_size)
        if self.threads is not None:
            at_least("threads", self.threads)
        SECONDS.check(flag("dist_timeout_s"), self.dist_timeout_s)  # finite, at most a year
