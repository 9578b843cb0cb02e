"""The Predictive Exit study (`chaincomp exit`): train a backbone and fine-grained exits (the authors' way by default),
then compare classic inference, early exit (confidence, entropy, max|logit|) and Predictive Exit (max|logit| and
max-softmax engines) on computation, energy and latency, at equal accuracy on every way's sweep curve.

Every way is calibrated on validation data to stay within ``max_drop`` points of the classic
network and measured on test data: accuracy, MACs and modelled energy from the exact batched
simulation of each input's path, wall latency from the batch-1 runtime that really skips work
(its decisions are checked against the simulation). Recipe (all keys optional, unknown keys refused):

    name: exit_default
    seed: 0
    data: {name: digits}                      # chaincomp.recipe.DataConfig
    model: {name: digits_vgg, width: 1.0}     # chaincomp.recipe.ModelConfig
    baseline: {epochs: 40, lr: 0.05, batch_size: 64}
    exits: {style: authors, share: auto, codewords: 64, train: joint, epochs: 10, lr: 0.01, optimizer: adam}
                                              # style: project -> head: bof|pool, train: frozen
    predictive: {beta: null, rounds: 8, start_block: 1, give_up: jump, thresholds: authors, max_drop: 0.5,
                 equal_drop: 0.25, sweep_points: 40}
    energy: {platform: jetson_tx2_cpu, latency_ms: null, slack: 1.1, controller: auto, policy: guarded}
    runtime: {limit: null, warmup: 10, threads: 1}

``model.weights`` may name the ``exit_model.safetensors`` of an earlier run: nothing is trained and
the ways are measured again (another platform, limit or beta). Definitions: docs/predictive_exit.md.

Modules: `schema` (the recipe), `network` (building and training the exits), `runner` (the phases of a run),
`compare` (equal accuracy, "up to"), `figures` (one way's figures), `report` (exit.md, plots, summary line).
"""
from __future__ import annotations

from .network import outputs, train_digest, train_network
from .report import WAYS, auroc_lines, criteria_auroc, summary_line, ways_of, ways_table, write_report
from .runner import Study, assemble, beta_grid, run_exit
from .schema import (DEFAULT_RECIPE, EnergyConfig, ExitRecipe, ExitsConfig, PredictiveConfig, RuntimeConfig,
                     load_exit_recipe, validate_exit_recipe, with_overrides)

__all__ = ["DEFAULT_RECIPE", "EnergyConfig", "ExitRecipe", "ExitsConfig", "PredictiveConfig", "RuntimeConfig",
           "Study", "WAYS", "assemble", "auroc_lines", "beta_grid", "criteria_auroc", "load_exit_recipe", "outputs",
           "run_exit", "summary_line", "train_digest", "train_network", "validate_exit_recipe", "ways_of", "ways_table",
           "with_overrides", "write_report"]
