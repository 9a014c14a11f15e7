#!/usr/bin/env bash
# Issue 11: the first `noprop lm compare` studies (back-prop transformer vs NoProp-LM, BENCHMARKS.md
# "NoProp-LM vs a back-prop transformer"). Regenerates the run directories (not committed, .gitignore)
# and the committed report.json / report.md / trajectory.png / plan.json of
#   experiments/lm/stdlib, experiments/lm/tiny-shakespeare                 (the defaults, 12 min each)
#   experiments/lm/stdlib-constant-lr-learned-10min,
#   experiments/lm/tiny-shakespeare-constant-lr-learned                    (the first defaults: learned
#                                                W_Embed, constant lr; each plan.json records the args)
# Resumable (finished runs are reused); the arguments are those in each committed plan.json (an option
# the plan predates counts as given at its default, so the constant-lr plans are made anew).
#   bash experiments/lm/compare.sh [STUDY ...]   (DATA=../shared/data/tinyshakespeare by default;
#                                                 about 25-30 min per study on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-../shared/data/tinyshakespeare}
STUDIES=("$@")
if (( ${#STUDIES[@]} == 0 )); then
  STUDIES=(stdlib tiny-shakespeare stdlib-constant-lr-learned-10min tiny-shakespeare-constant-lr-learned)
fi
shakespeare=(--dataset tiny-shakespeare --data-dir "$DATA")
first_defaults=(--embedding learned --lr-schedule constant)
for study in "${STUDIES[@]}"; do
  case "$study" in
    stdlib) args=() ;;
    tiny-shakespeare) args=("${shakespeare[@]}") ;;
    stdlib-constant-lr-learned-10min) args=("${first_defaults[@]}" --minutes 10) ;;
    tiny-shakespeare-constant-lr-learned) args=("${shakespeare[@]}" "${first_defaults[@]}") ;;
    *) echo "compare.sh: unknown study $study" >&2; exit 2 ;;
  esac
  noprop lm compare "${args[@]}" --no-progress --out "experiments/lm/$study"
done
