"""Two to four runs side by side on the same prompts and seeds, with metric deltas."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard.data import METRICS, plain, run_files


def show(root, runs: pd.DataFrame) -> None:
    st.title("Compare")
    finished = runs[runs["status"] == "finished"]
    chosen = st.multiselect("runs (2 to 4)", list(finished["id"]), max_selections=4)
    if len(chosen) < 2:
        st.info("Pick two to four finished runs. The first one is the baseline for the deltas.")
        return
    picked = finished.set_index("id").loc[chosen]
    if picked["protocol"].nunique() > 1:
        st.warning("These runs were evaluated under different protocols: their numbers do not compare.")
    base = picked.iloc[0]
    table = {}
    for run_id, row in picked.iterrows():
        column = {m: row[m] for m in METRICS}
        table[run_id] = column
        if run_id != chosen[0]:
            table[f"Δ {run_id}"] = {m: None if pd.isna(row[m]) or pd.isna(base[m]) else row[m] - base[m]
                                    for m in METRICS}
    st.table(pd.DataFrame(table).dropna(how="all").map(lambda v: "-" if v is None or pd.isna(v) else f"{v:.4g}"))
    st.subheader("Final samples (same captions and noise in every run)")
    for column, run_id in zip(st.columns(len(chosen)), chosen, strict=True):
        files = run_files(root, run_id, runs)
        with column:
            st.caption(plain(f"{run_id} ({picked.loc[run_id, 'method']})"))
            if files and files["grids"]:
                st.image(files["grids"][max(files["grids"])].read_bytes())
