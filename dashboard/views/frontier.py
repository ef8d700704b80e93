"""Reward gained against divergence paid: each run's (KL to the reference, reward), with the closed-form optimum's
curve as the bound no method can beat at equal KL."""

from __future__ import annotations

import json

import altair as alt
import pandas as pd
import streamlit as st

from dashboard.data import plain

EXPLAINED = ("Each point is a finished run: its exact KL(p_theta || p_ref) in nats (change of variables on the "
             "generator) against its mean reward. The dashed line is the KL optimum p* ~ p_ref exp(alpha r) over "
             "alpha: no law has more reward at the same KL.")


def measured(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished runs with an exact KL and a closed-form optimum (analytic-world runs)."""
    return runs[(runs["status"] == "finished") & runs["kl_ref"].notna() & runs["optimum_curve"].ne("null")]


def chart(runs: pd.DataFrame) -> pd.DataFrame | None:
    """The frontier of runs that share one protocol (so one optimum curve); their points, or None if none has
    an exact KL. Runs far beyond the others are left out of the view, with a word (and listed by the caller)."""
    chosen = measured(runs)
    if chosen.empty:
        return None
    curve = pd.DataFrame(json.loads(chosen["optimum_curve"].iloc[0])).rename(
        columns={"kl_ref": "kl", "alpha_rew": "alpha"})
    points = chosen.rename(columns={"kl_ref": "kl", "alpha_rew": "alpha"})[
        ["id", "method", "alpha", "alpha_cfg", "steps", "kl", "reward"]]
    # The view covers the runs and the bound over their reach: a run that ran away (an unbounded reward under a
    # saturating divergence) or the bound's far end (alpha up to 1000) would flatten everything else into a corner.
    reach = 1.5 * points["kl"].quantile(0.9)
    beyond = curve[curve["kl"] > reach]
    curve = pd.concat([curve[curve["kl"] <= reach], beyond.head(1)])
    hidden = int((points["kl"] > reach).sum())
    if hidden:
        st.caption(f"{hidden} run(s) beyond {reach:.3g} nats are left out of the view.")
    bound = alt.Chart(curve).mark_line(color="black", strokeDash=[6, 3]).encode(
        x=alt.X("kl:Q", title="KL to reference (nats)"), y=alt.Y("reward:Q", title="mean reward"),
        tooltip=["alpha", "kl", "reward"])
    dots = alt.Chart(points[points["kl"] <= reach]).mark_circle(size=110).encode(
        x="kl:Q", y="reward:Q", color=alt.Color("method:N"),
        tooltip=["id", "method", "alpha", "alpha_cfg", "steps", "kl", "reward"])
    st.altair_chart(bound + dots, width="stretch")
    return points


def show(root, runs: pd.DataFrame) -> None:
    st.title("Reward-divergence frontier")
    st.caption(EXPLAINED + " `bench sweep method=NAME space=frontier` fills one in.")
    found = measured(runs)
    if found.empty:
        st.info("No finished analytic-world run with a closed-form optimum and an exact KL yet: try "
                "`bench sweep method=kl_rlhf space=frontier`.")
        return
    labels = sorted(found["protocol_label"].unique())
    label = st.selectbox("protocol", labels) if len(labels) > 1 else labels[0]
    st.caption(f"Protocol: {plain(label)}")
    points = chart(found[found["protocol_label"] == label])
    st.dataframe(points.sort_values(["method", "alpha"]), hide_index=True)
