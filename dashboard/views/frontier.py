"""Reward gained against divergence paid: each run's (KL to the reference, reward), with the closed-form optimum's
curve as the bound no method can beat at equal KL."""

from __future__ import annotations

import json

import altair as alt
import pandas as pd
import streamlit as st

from dashboard.data import plain


def show(root, runs: pd.DataFrame) -> None:
    st.title("Reward-divergence frontier")
    st.caption("Each point is a finished run: its exact KL(p_theta || p_ref) in nats (change of variables on the "
               "generator) against its mean reward. The line is the KL optimum p* ~ p_ref exp(alpha r) over alpha: "
               "no law has more reward at the same KL. `bench sweep method=NAME space=frontier` fills one in.")
    measured = runs[(runs["status"] == "finished") & runs["kl_ref"].notna() & runs["optimum_curve"].ne("null")]
    if measured.empty:
        st.info("No finished analytic-world run with a closed-form optimum and an exact KL yet: try "
                "`bench sweep method=kl_rlhf space=frontier`.")
        return
    labels = sorted(measured["protocol_label"].unique())
    label = st.selectbox("protocol", labels) if len(labels) > 1 else labels[0]
    chosen = measured[measured["protocol_label"] == label]
    st.caption(f"Protocol: {plain(label)}")
    curve = pd.DataFrame(json.loads(chosen["optimum_curve"].iloc[0])).rename(columns={"kl_ref": "kl"})
    points = chosen.rename(columns={"kl_ref": "kl", "alpha_rew": "alpha"})[
        ["id", "method", "alpha", "alpha_cfg", "kl", "reward"]]
    # The view covers the bound and the runs near it: a run that ran away (an unbounded reward under a saturating
    # divergence) is listed below rather than flattening the chart.
    kl_limit = 1.5 * max(curve["kl"].max(), points["kl"].median())
    shown = points[points["kl"] <= kl_limit]
    bound = alt.Chart(curve.rename(columns={"alpha_rew": "alpha"})).mark_line(color="black", strokeDash=[6, 3]).encode(
        x=alt.X("kl:Q", title="KL to reference (nats)"), y=alt.Y("reward:Q", title="mean reward"),
        tooltip=["alpha", "kl", "reward"])
    dots = alt.Chart(shown).mark_circle(size=110).encode(
        x="kl:Q", y="reward:Q", color=alt.Color("method:N"),
        tooltip=["id", "method", "alpha", "alpha_cfg", "kl", "reward"])
    st.altair_chart(bound + dots, width="stretch")
    st.table(points.sort_values(["method", "alpha"]))
