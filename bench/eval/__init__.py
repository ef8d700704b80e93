"""Evaluation: metrics and scorers whose protocol is recorded with every number."""
