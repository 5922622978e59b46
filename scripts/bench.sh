#!/usr/bin/env bash
# Set-up + the main job: creates .venv, installs fedjax_comp, runs FedAvg on
# Dirichlet-partitioned MNIST-1D (generated locally, no download).
# Extra arguments go to the runner, e.g. scripts/bench.sh --rounds=50.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
exec .venv/bin/python -m benchmarks.fedavg --output_dir=results/fedavg "$@"
