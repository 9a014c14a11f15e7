#!/usr/bin/env bash
# Issue 22: the first version's 12-minute comparison (back-prop vs NoProp-DT, one layer per block, the
# `noprop lm compare` defaults) rerun with the fair read-outs and selection on validation bits per byte,
# on the first version's FLOP budget: its plan.json is copied in, and lm compare reuses a plan whose
# arguments are the same (so --data-dir must be spelled as it was there).
#   bash experiments/lm/defaults-fair.sh      (about 35 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=experiments/lm/tiny-shakespeare-12min-fair
mkdir -p "$OUT"
[ -e "$OUT/plan.json" ] || cp experiments/lm/tiny-shakespeare/plan.json "$OUT/plan.json"
noprop lm compare --dataset tiny-shakespeare --data-dir ../shared/data/tinyshakespeare \
  --no-progress --out "$OUT"
