"""Optuna studies over method hyperparameters (search spaces are YAML files in this folder)."""
