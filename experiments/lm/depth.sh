#!/usr/bin/env bash
# Issue 22: every text method against the back-prop transformer at equal parameters and FLOPs, and
# the depth sweep (layers per block k = 1, 2, 3, 6 of 6 layers in all) for the block-wise methods,
# all read with the fair read-out protocol. One command, resumable (finished runs are reused):
#   bash experiments/lm/depth.sh        (DATA=../shared/data/tinyshakespeare by default)
# 11 runs of --minutes 3 each (the FLOP budget is sized once, by the timed calibration in plan.json);
# the read-outs are evaluated on the first 256 validation and 256 test windows (--eval-windows).
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-../shared/data/tinyshakespeare}
noprop lm compare --dataset tiny-shakespeare --data-dir "$DATA" \
  --models backprop,dt,ct,fm,diffusionblocks --layers-per-block 1,2,3,6 \
  --minutes 3 --eval-windows 256 --no-progress --out experiments/lm/depth-tiny-shakespeare
