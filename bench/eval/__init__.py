"""Evaluation: metrics and scorers whose protocol is recorded with every number."""

# What the analytic world's metrics report, in the order tables show them. Kept free of torch so that the
# dashboard and the sweep parser can name metrics without importing it. The *_star ones need a closed-form p*.
METRICS = ("reward", "nll_ref", "coverage", "precision", "fd_ref", "mmd_ref", "fd_star", "mmd_star")
