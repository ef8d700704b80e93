"""Methods by metrics, one table per evaluation protocol; seeds averaged; reported rows apart."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from bench.eval import METRIC_LABELS, evaluation_columns
from dashboard.data import METRICS, load_evals, load_reported, plain, run_link, stamp
from dashboard.views import frontier

LOWER_IS_BETTER = {"kl_ref", "kl_star", "nll_ref", "fd_ref", "mmd_ref", "fd_star", "mmd_star", "fid"}


def aggregate(group: pd.DataFrame) -> pd.DataFrame:
    """One row per setting (a configuration up to its seed): mean and spread over seeds."""
    rows = []
    for _, runs in group.groupby("setting", sort=False):
        first = runs.iloc[0]
        row = {"method": first["method"], "alpha_rew": first["alpha_rew"], "alpha_cfg": first["alpha_cfg"],
               "steps": first["steps"], "p*_at": first["p*_at"], "seeds": len(runs)}
        for metric in METRICS:
            values = runs[metric].dropna()
            row[metric] = values.mean() if len(values) else None
            row[f"{metric}_sd"] = values.std(ddof=1) if len(values) > 1 else None
        row["runs"] = ", ".join(runs["id"])
        row["open"] = run_link(list(runs["id"]))
        rows.append(row)
    return pd.DataFrame(rows)


def mean_sd(mean, sd) -> str:
    if mean is None or pd.isna(mean):
        return "-"
    return f"{mean:.4g}" + ("" if sd is None or pd.isna(sd) else f" ± {sd:.2g}")


def formatted(table: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    out = table[["method", "open", "alpha_rew", "alpha_cfg", "steps", "p*_at", "seeds"]].copy()
    for metric in metrics:
        out[metric] = [mean_sd(m, s) for m, s in zip(table[metric], table[f"{metric}_sd"], strict=True)]
    out["runs"] = table["runs"]
    return out


# A row opens its run's page, or the comparison of its seeds.
LINKS = {"open": st.column_config.LinkColumn("open", display_text="run page",
                                            help="the run, or its seeds side by side")}


def show(root, runs: pd.DataFrame) -> None:
    st.title("Leaderboard")
    st.caption("Rows are ranked together only when their evaluation protocol matches (the backend and its "
               "settings, reward and evaluation settings): each protocol has its own table. ± is the standard "
               "deviation over seeds. "
               "Distances to the KL optimum (`fd_star`, `mmd_star`) measure how far a run ends from p* ~ p_ref "
               "exp(alpha r) at `alpha = p*_at`: the target of KL-RLHF, not of DI++ or DI*; compare them between "
               "equal `p*_at`. `kl_ref` is the exact KL to the reference in nats.")
    finished = runs[(runs["status"] == "finished") & runs["study"].isna()]
    include_sweeps = st.sidebar.checkbox("include sweep trials", value=False)
    if include_sweeps:
        finished = runs[runs["status"] == "finished"]
    methods = sorted(finished["method"].unique())
    chosen = st.sidebar.multiselect("methods", methods, default=methods)
    metric = st.sidebar.selectbox("sort by", METRICS, index=0)
    best_first = st.sidebar.checkbox("best first", value=True)
    shown = finished[finished["method"].isin(chosen)]
    if shown.empty:
        st.info("No finished runs match. Start one with `bench run method=di_star`.")
    for label, group in shown.groupby("protocol_label", sort=True):
        table = aggregate(group)
        ascending = (metric in LOWER_IS_BETTER) == best_first
        table = table.sort_values(metric, ascending=ascending, na_position="last")
        st.subheader(f"Protocol: {plain(label)}")
        present = [m for m in METRICS if table[m].notna().any()]
        st.dataframe(formatted(table, present).rename(columns=METRIC_LABELS), hide_index=True, column_config=LINKS)
        if frontier.measured(group).shape[0]:
            st.caption("Reward-divergence frontier of this protocol. " + frontier.EXPLAINED)
            frontier.chart(group)

    evaluations = load_evals(str(root), stamp(root))
    if not evaluations.empty:
        st.header("Evaluations (bench eval)")
        st.caption("One table per evaluation protocol: prompt set and version, images per prompt, seed, metric "
                   "versions.")
        methods_of = dict(zip(runs["id"], runs["method"], strict=True))
        columns = evaluation_columns()
        for label, group in evaluations.groupby("protocol_label", sort=True):
            st.subheader(f"Protocol: {plain(label)}")
            table = group.drop(columns=["protocol", "protocol_label"]).assign(
                method=[methods_of.get(r, "external pipeline") for r in group["run"]], status="measured")
            present = [m for m in columns if m in table and table[m].notna().any()]
            table = table.sort_values(metric if metric in table else present[0],
                                      ascending=(metric in LOWER_IS_BETTER) == best_first)
            name = group["protocol_name"].iloc[0]
            if name:  # a paper's protocol: its published rows belong beside ours, flagged
                published = pd.DataFrame([{"run": r["source"], "method": r["method"], "eval": name,
                                           "status": "reported", **r["metrics"]} for r in load_reported()
                                          if r["protocol"].get("name") == name])
                table = pd.concat([table, published], ignore_index=True)
            st.dataframe(table[["status", "run", "method", "eval", *present]], hide_index=True)

    st.subheader("Reported in papers")
    st.caption("Published numbers, flagged 'reported': not measured here, and ranked only with rows of the same "
               "protocol.")
    reported = load_reported()
    frame = pd.DataFrame([{"status": "reported", "method": r["method"], **r["metrics"],
                           "protocol": ", ".join(f"{k}={v}" for k, v in r["protocol"].items()),
                           "source": r["source"]} for r in reported])
    st.dataframe(frame, hide_index=True)
