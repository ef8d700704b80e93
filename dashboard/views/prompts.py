"""Prompt browser for `bench eval` outputs: one prompt's images from every run evaluated under one protocol, side
by side with their scores; prompts sorted by the score gap between two runs, to find where a method wins or loses."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard.data import inside, load_evals, plain, read_jsonl, stamp

NOT_SCORES = ("index", "caption", "seed", "image")


def scores_of(root, evaluations: pd.DataFrame) -> pd.DataFrame:
    """Every image's scores of these evaluations, one row an image, with its run and its file."""
    rows = []
    for run_id, eval_id in zip(evaluations["run"], evaluations["eval"], strict=True):
        path = inside(root, "runs", run_id, "evals", eval_id, "scores.jsonl")
        for line in read_jsonl(path) if path else []:
            # Older evaluations did not record the file; they used the flat layout.
            relative = line.get("image", f"images/{line['index']:05d}.png")
            image = inside(root, "runs", run_id, "evals", eval_id, *relative.split("/"))
            rows.append({**line, "run": run_id, "file": image})
    return pd.DataFrame(rows)


def show(root, runs: pd.DataFrame) -> None:
    st.title("Prompts")
    evaluations = load_evals(str(root), stamp(root))
    if evaluations.empty:
        st.info("No evaluations yet: `bench eval run=ID` scores a run's images prompt by prompt.")
        return
    labels = sorted(evaluations["protocol_label"].unique())
    label = st.selectbox("evaluation protocol", labels)
    chosen = evaluations[evaluations["protocol_label"] == label]
    scores = scores_of(root, chosen)
    if scores.empty:
        st.info("These evaluations have no readable per-image scores.")
        return
    metrics = [c for c in scores.columns if c not in (*NOT_SCORES, "run", "file")]
    metric = st.selectbox("score", metrics)
    evaluated = list(dict.fromkeys(scores["run"]))
    means = scores.pivot_table(index="caption", columns="run", values=metric, aggfunc="mean")[evaluated]
    if len(evaluated) > 1:
        left, right = st.columns(2)
        first = left.selectbox("run A", evaluated, index=0)
        second = right.selectbox("run B", evaluated, index=1)
        means = means.assign(gap=means[second] - means[first]).sort_values("gap", key=abs, ascending=False)
        st.caption(plain(f"Prompts by |{metric} of B - {metric} of A|, largest first: where one run wins or loses."))
    st.dataframe(means, width="stretch")
    prompt = st.selectbox("prompt", list(means.index))
    st.subheader(plain(prompt))
    shown = scores[scores["caption"] == prompt]
    methods = dict(zip(runs["id"], runs["method"], strict=True))
    for column, run_id in zip(st.columns(len(evaluated)), evaluated, strict=True):
        column.caption(plain(f"{run_id} ({methods.get(run_id, 'external pipeline')})"))
        for _, image in shown[shown["run"] == run_id].iterrows():
            if image["file"] is not None:
                column.image(image["file"].read_bytes(),
                             caption=f"{metric} {image[metric]:.4g} (image {image['index']})")
