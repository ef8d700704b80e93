"""Evaluation: metrics and scorers whose protocol is recorded with every number."""

# What the analytic world's metrics report, in the order tables show them. Kept free of torch so that the
# dashboard and the sweep parser can name metrics without importing it. The *_star ones need a closed-form p*.
METRICS = ("reward", "nll_ref", "coverage", "precision", "fd_ref", "mmd_ref", "fd_star", "mmd_star")


def evaluation_columns() -> tuple[str, ...]:
    """Every number `bench eval` can report: the world's metrics, the image scorers and FID."""
    from bench.rewards import SCORERS

    return (*METRICS, *SCORERS, "fid")
