"""Two to four runs side by side on the same prompts and seeds: metric deltas, sample grids at one step, and the
runs' evaluation curves on shared axes. Addressable as ?page=compare&runs=A,B."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboard.data import METRICS, plain, run_files

CURVES = ("reward", "kl_ref", "nll_ref", "mmd_ref", "mmd_star", "coverage")


def chosen_runs(finished: pd.DataFrame) -> list[str]:
    ids = list(finished["id"])
    asked = [r for r in st.query_params.get("runs", "").split(",") if r]
    unknown = [r for r in asked if r not in ids]
    if unknown:
        st.warning(f"Not finished runs of this results store, left out: {plain(', '.join(unknown))}")
    default = [r for r in asked if r in ids][:4]
    chosen = st.multiselect("runs (2 to 4)", ids, default=default, max_selections=4)
    st.query_params["runs"] = ",".join(chosen)  # the address always reproduces the view
    return chosen


def show(root, runs: pd.DataFrame) -> None:
    st.title("Compare")
    finished = runs[runs["status"] == "finished"]
    chosen = chosen_runs(finished)
    if len(chosen) < 2:
        st.info("Pick two to four finished runs. The first one is the baseline for the deltas.")
        return
    picked = finished.set_index("id").loc[chosen]
    if picked["protocol"].nunique() > 1:
        st.warning("These runs were evaluated under different protocols: their numbers do not compare.")
    base = picked.iloc[0]
    table = {}
    for run_id, row in picked.iterrows():
        table[run_id] = {m: row[m] for m in METRICS}
        if run_id != chosen[0]:
            table[f"Δ {run_id}"] = {m: None if pd.isna(row[m]) or pd.isna(base[m]) else row[m] - base[m]
                                    for m in METRICS}
    st.table(pd.DataFrame(table).dropna(how="all").map(lambda v: "-" if v is None or pd.isna(v) else f"{v:.4g}"))

    files = {run_id: run_files(root, run_id, runs) for run_id in chosen}
    st.subheader("Samples (same captions and noise in every run)")
    shared = sorted(set.intersection(*(set(f["grids"]) if f else set() for f in files.values())))
    if shared:
        step = st.select_slider("step, for every run", shared, value=shared[-1])
        for column, run_id in zip(st.columns(len(chosen)), chosen, strict=True):
            column.caption(plain(f"{run_id} ({picked.loc[run_id, 'method']}), step {step}"))
            column.image(files[run_id]["grids"][step].read_bytes())
    else:
        st.info("These runs have no sample grid at a common step.")

    st.subheader("Evaluation curves")
    records = pd.DataFrame([{"run": run_id, "step": r["step"], **{m: r.get(m) for m in CURVES}}
                            for run_id, f in files.items() if f
                            for r in f["records"] if r.get("kind") == "eval"])
    present = [m for m in CURVES if m in records and records[m].notna().any()]
    for column, metric in zip(st.columns(min(3, len(present)) or 1) * 2, present, strict=False):
        column.altair_chart(alt.Chart(records.dropna(subset=[metric])).mark_line(point=True).encode(
            x=alt.X("step:Q"), y=alt.Y(f"{metric}:Q", scale=alt.Scale(zero=False)), color=alt.Color("run:N"),
            tooltip=["run", "step", f"{metric}:Q"]).properties(title=metric, height=220), width="stretch")
