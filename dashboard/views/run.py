"""One run: configuration, training curves, sample grids by step, per-prompt scores."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard.data import plain, run_files


def curves(title: str, records: pd.DataFrame, keys: tuple[str, ...]) -> None:
    st.subheader(title)
    for key in keys:
        if key in records:
            st.caption(key)
            st.line_chart(records, x="step", y=key, height=160)


def show(root, runs: pd.DataFrame) -> None:
    st.title("Run")
    if runs.empty:
        st.info("No runs yet.")
        return
    ids = list(runs["id"])
    wanted = st.query_params.get("run")
    if wanted is not None and wanted not in ids:
        st.error("The run named in the address is not a run of this results store.")
        wanted = None
    run_id = st.selectbox("run", ids, index=ids.index(wanted) if wanted else 0)
    st.query_params["run"] = run_id  # the address always names the run shown
    files = run_files(root, run_id, runs)
    if files is None:
        st.error("Unknown run.")
        return
    row = runs[runs["id"] == run_id].iloc[0]
    st.markdown(f"**{plain(run_id)}**: {plain(row['method'])}, status **{plain(row['status'])}**")

    train = pd.DataFrame([r for r in files["records"] if r.get("kind") == "train"])
    evals = pd.DataFrame([{k: v for k, v in r.items() if k != "per_prompt"}
                          for r in files["records"] if r.get("kind") == "eval"])
    left, right = st.columns(2)
    with left:
        curves("Training", train, ("reward", "div", "loss_gen", "loss_fake"))
    with right:
        curves("Evaluation (fixed seed set)", evals, ("reward", "nll_ref", "coverage", "mmd_star"))

    st.subheader("Samples")
    if files["grids"]:
        steps = sorted(files["grids"])
        step = st.select_slider("step", steps, value=steps[-1])
        st.image(files["grids"][step].read_bytes(), caption=f"step {step}: a row a caption, fixed noise")
    summary = files["summary"]
    if summary and summary.get("per_prompt"):
        st.subheader("Per-prompt scores (final evaluation; row i is row i of the grid)")
        st.table(pd.DataFrame(summary["per_prompt"]))
    for eval_id, evaluation in files["evals"].items():
        st.subheader(f"Evaluation {plain(eval_id)}")
        st.caption(plain(", ".join(f"{k}={v}" for k, v in evaluation["summary"]["protocol"]["prompt_set"].items())))
        st.table(pd.DataFrame(evaluation["summary"]["per_prompt"]))
        per_prompt = evaluation["summary"]["protocol"]["prompt_set"]["per_prompt"]
        firsts = evaluation["images"][::per_prompt]
        st.image([p.read_bytes() for p in firsts], caption=[r["caption"] for r in evaluation["summary"]["per_prompt"]],
                 width=96)
    st.subheader("Configuration")
    st.json(files["config"], expanded=False)
