#!/usr/bin/env bash
# Set-up + the main job: creates .venv, installs fedjax_comp, runs the
# leaderboard (FedAvg with every compression method, 3 seeds) on
# Dirichlet-partitioned MNIST-1D (generated locally, no download).
# Extra arguments go to the runner, e.g. scripts/bench.sh --seeds=1.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
exec .venv/bin/python -m benchmarks.leaderboard --output_dir=results/leaderboard --overwrite "$@"
