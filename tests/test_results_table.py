"""benchmarks/results_table.py: the table of docs/results.md from run folders."""

from __future__ import annotations

import csv
import json

from tests.conftest import load_benchmark


def test_results_table_checks_the_targets_against_the_best_rule(tmp_path, capsys):
    """The default target needs 20 % less carbon to target than the best registered heuristic (most targets,
    then least carbon: carbon_periodic here, since carbon_aware misses one) with as many targets, the attack
    figure fewer attackers than it; the prior rule is not a heuristic."""
    table = load_benchmark("results_table")
    fields = ["scheduler", "config", "seed", "reached_target", "carbon_to_target_g", "malicious_participation"]

    def run_folder(name, model_carbon, model_attackers, model_reached=(1, 1)):
        run = tmp_path / name
        for part, rows in {
            "comparison": [("best_model", model_carbon, 0, model_reached), ("carbon_periodic", 20.0, 0, (1, 1)),
                           ("carbon_aware", 5.0, 0, (1, 0)), ("carbon_periodic:period=6", 1.0, 0, (1, 1))],
            "attack_heavy": [("best_model", 20.0, model_attackers, (1, 1)), ("carbon_periodic", 20.0, 200, (1, 1)),
                             ("trust_threshold", 90.0, 120, (1, 1)), ("carbon_periodic:period=6", 1.0, 5, (1, 1))],
            "x4": [("best_model", 100.0, 0, (1, 1)), ("random_k", 3000.0, 0, (1, 1))],
        }.items():
            (run / part).mkdir(parents=True)
            with open(run / part / "results.csv", "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(fields)
                for scheduler, carbon, attackers, reached in rows:
                    for seed, hit in enumerate(reached):
                        writer.writerow([scheduler, part, seed, hit, carbon if hit else "", attackers])
        (run / "evaluations.csv").write_text("timesteps,best\n10000,True\n20000,False\n")
        return run

    passing = run_folder("passing", 16.0, 199)
    short = run_folder("short", 16.1, 200)
    missed = run_folder("missed", 10.0, 100, model_reached=(1, 0))
    table.main([str(passing), str(short), str(missed), str(tmp_path / "absent.log")])
    rows = {line.split("|")[1].strip(" `"): line for line in capsys.readouterr().out.splitlines()[2:]}
    passed = "| yes (carbon_periodic) | yes (200; fewest 120) |"
    assert rows["passing"].endswith(passed) and "20k (10k)" in rows["passing"]
    assert rows["short"].endswith("| no (carbon_periodic) | no (200; fewest 120) |")
    assert "| 10.0 g, 1/2 " in rows["missed"]
    assert rows["missed"].endswith("| no (carbon_periodic) | yes (200; fewest 120) |")

    # --model best_model_unguarded: the same validation as the best model reads the run's rows; another one
    # reads its own comparisons where they were run, and says "not run" where not
    for run, steps in ((passing, 10000), (short, 20000), (missed, 20000)):
        (run / "best_model_unguarded.json").write_text(json.dumps({"timesteps": steps}))
    for part, attackers in (("comparison", 0), ("attack_heavy", 150)):
        (short / "best_model_unguarded" / part).mkdir(parents=True)
        with open(short / "best_model_unguarded" / part / "results.csv", "w", newline="") as handle:
            csv.writer(handle).writerows([fields, ["best_model_unguarded", part, 0, 1, 15.0, attackers],
                                          ["best_model_unguarded", part, 1, 1, 15.0, attackers]])
    table.main(["--model", "best_model_unguarded", str(passing), str(short), str(missed)])
    rows = {line.split("|")[1].split("`")[1]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["passing"].endswith(passed) and "20k (10k)" in rows["passing"]
    assert "20k (20k) | 15.0 g, 2/2 (-25.0%) | 15.0 g / 150, 2/2 | not run | yes (carbon_periodic) | yes" \
        in rows["short"]
    assert rows["missed"].endswith("| not run |")

    # --by-recipe: runs grouped by the settings file their train.log names, seeds from settings.yaml
    for run, recipe, seed in ((passing, "quick_start", 1), (short, "quick_start", 0), (missed, "ablations/x", 2)):
        (run / "train.log").write_text(f"12:00:00 training maskable_ppo (settings /any/where/{recipe}.yaml) on "
                                       "default (32 nodes) for 340000 steps, seed 0, 8 env(s) -> run\n")
        (run / "settings.yaml").write_text(f"seed: {seed}\n")
    table.main(["--by-recipe", str(passing), str(short), str(missed)])
    rows = capsys.readouterr().out.splitlines()
    assert rows[2].startswith("| `quick_start` | 0, 1 | 16.0–16.1 g (")
    assert rows[2].endswith("| 199–200 | 0 of 8 | 1 of 2 |")
    assert rows[3] == "| `x` | 2 | 10.0–10.0 g (-50% to -50%) | 100–100 | 1 of 4 | 0 of 1 |"
