#!/usr/bin/env bash
# Trains the learned scheduler (MaskablePPO + node-set policy) on the default scenario with the quick
# start's recipe (configs/train/quick_start.yaml unless SETTINGS names another: a residual policy over a
# carbon_periodic variant, attack_heavy mixed in, a falling step size, the carbon guard; 340k steps or 28
# minutes), compares it with every heuristic on held-out test seeds of the default and the attack_heavy
# scenario, then runs the same model unchanged on a fleet four times as large. Not part of CI; about half an
# hour on 2 cores, training included. Run nothing else beside it: a second process costs the learner steps.
#
#   benchmarks/train_default.sh                                           # the quick start's recipe, seed 0
#   SEED=5 OUT=runs/s5 benchmarks/train_default.sh                        # another seed
#   SETTINGS=ablations/no_carbon_guard benchmarks/train_default.sh        # an ablation
#   OUT=runs/short TRAIN_MINUTES=8 benchmarks/train_default.sh            # a shortened run
#
# Knobs: TRAIN_MINUTES and TIMESTEPS override the recipe's clock and step budget; SETTINGS= (empty) trains
# from scratch with configs/train/default.yaml; ALSO_TRAIN_ON=attack_heavy mixes attackers into training;
# IMITATE=energy_carbon_trust warm-starts the policy from that heuristic (training/imitation.py);
# PRIOR=carbon_periodic learns a residual policy on top of that rule (agents/policies.py).
#
# Left in $OUT: the training log with the held-out validations and the run's own footprint (codecarbon),
# comparison/results.md (model against the heuristics on test seeds 20000.., never used in training or
# model selection), attack_heavy/results.md, x4/results.md (the model on 4x the nodes).
# benchmarks/results_table.py turns run folders into the table of docs/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-runs/bench-default}
TRAIN_MINUTES=${TRAIN_MINUTES-}      # wall-clock budget of the learner (unset: the settings' time_limit_minutes)
TIMESTEPS=${TIMESTEPS-}              # step budget (unset: the settings' total_timesteps)
SEED=${SEED:-0}
N_ENVS=${N_ENVS:-8}
X4_SEEDS=${X4_SEEDS:-5}
PYTHON=${PYTHON:-python}
ALSO_TRAIN_ON=${ALSO_TRAIN_ON-}
ATTACK_SEEDS=${ATTACK_SEEDS:-10}
IMITATE=${IMITATE-}
PRIOR=${PRIOR-}
SETTINGS=${SETTINGS-quick_start}

start=$(date +%s)
"$PYTHON" -m greengossip.training.cli train --config default ${TIMESTEPS:+--timesteps $TIMESTEPS} \
  ${TRAIN_MINUTES:+--time-limit $TRAIN_MINUTES} --seed "$SEED" --n-envs "$N_ENVS" --out "$OUT" --no-progress \
  ${ALSO_TRAIN_ON:+--also-train-on $ALSO_TRAIN_ON} \
  ${IMITATE:+--imitate $IMITATE} ${PRIOR:+--prior $PRIOR} ${SETTINGS:+--settings $SETTINGS}
trained=$(date +%s)

OUT="$OUT" X4_SEEDS="$X4_SEEDS" ATTACK_SEEDS="$ATTACK_SEEDS" "$PYTHON" - <<'PY'
"""The model against the heuristics on attack_heavy, then unchanged on the default scenario with 128 nodes."""
import os
from pathlib import Path

import yaml

from greengossip.training.evaluate import run_evaluation
from greengossip.training.settings import FIRST_TEST_SEED, load_settings
from greengossip.training.train import prior_rule_specs

out = Path(os.environ["OUT"])
heuristics = ["all_nodes", "random_k", "battery_greedy", "carbon_aware", "oort", "trust_threshold", "event_triggered",
              "energy_carbon_trust", "carbon_periodic"]
attack_seeds = list(range(FIRST_TEST_SEED, FIRST_TEST_SEED + int(os.environ["ATTACK_SEEDS"])))
# a residual policy's prior rule runs beside the model, as in the default-scenario comparison
rules = prior_rule_specs(load_settings(out / "settings.yaml"))
run_evaluation([str(out / "best_model.zip"), *heuristics, *rules], ["configs/attack_heavy.yaml"], attack_seeds,
               out / "attack_heavy", workers=2, progress=False)
print((out / "attack_heavy" / "results.md").read_text())

config = yaml.safe_load(Path("configs/default.yaml").read_text())
config["n_nodes"] = 4 * config["n_nodes"]
x4 = out / "default_x4.yaml"
x4.write_text(yaml.safe_dump(config, sort_keys=False))
seeds = list(range(FIRST_TEST_SEED, FIRST_TEST_SEED + int(os.environ["X4_SEEDS"])))
run_evaluation([str(out / "best_model.zip"), "all_nodes", "random_k", "carbon_aware", "energy_carbon_trust",
                "carbon_periodic", *rules], [str(x4)],
               seeds, out / "x4", workers=2, progress=False)
print((out / "x4" / "results.md").read_text())
PY
end=$(date +%s)
echo "benchmark: training + comparison $((trained - start)) s, 4x-nodes run $((end - trained)) s, total $((end - start)) s"
