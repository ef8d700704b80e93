"""Evaluation: metrics and scorers whose protocol is recorded with every number."""

# What the analytic world's metrics report, in the order tables show them. Kept free of torch so that the
# dashboard and the sweep parser can name metrics without importing it. kl_ref is the exact KL(p_theta || p_ref)
# in nats; the *_star ones are distances to the closed-form KL optimum p*, the target of KL-RLHF only (kl_star, the
# exact KL(p_theta || p*) in nats, is KL-RLHF's objective less its minimum).
METRICS = ("reward", "kl_ref", "kl_star", "kl_folded", "nll_ref", "coverage", "precision", "fd_ref", "mmd_ref",
           "fd_star", "mmd_star")
# How tables and reports name them: plainly, and the KL optimum as what it is (KL-RLHF's target, not DI++'s or DI*'s).
METRIC_LABELS = {
    "reward": "reward", "kl_ref": "KL to reference (nats)", "kl_star": "KL to KL optimum (nats)",
    "kl_folded": "share folded (left out of KL)",
    "nll_ref": "reference NLL (nats/dim)",
    "coverage": "mode coverage", "precision": "precision", "fd_ref": "FD to reference", "mmd_ref": "MMD to reference",
    "fd_star": "FD to KL optimum", "mmd_star": "MMD to KL optimum",
}


def evaluation_columns() -> tuple[str, ...]:
    """Every number `bench eval` can report: the world's metrics, the image scorers and FID."""
    from bench.rewards import SCORERS

    return (*METRICS, *SCORERS, "fid")
