"""Studies: trials, the alpha_rew x alpha_cfg map of the objective, the Pareto front, parameter importance."""

from __future__ import annotations

import warnings

import altair as alt
import optuna
import pandas as pd
import streamlit as st

from dashboard.data import inside, plain


@st.cache_data(show_spinner=False, ttl=10)
def load_trials(url: str, name: str) -> tuple[pd.DataFrame, list[str], list[str]]:
    study = optuna.load_study(study_name=name, storage=url)
    objectives = [m for m, _ in study.user_attrs.get("objectives", [])] or ["value"]
    directions = [d.name.lower() for d in study.directions]
    front = {t.number for t in study.best_trials} if any(t.values for t in study.trials) else set()
    rows = []
    for t in study.trials:
        values = dict(zip(objectives, t.values, strict=True)) if t.values else {}
        rows.append({"trial": t.number, "state": t.state.name.lower(), **values, **t.params,
                     "pareto": t.number in front, "run": t.user_attrs.get("run_id")})
    return pd.DataFrame(rows), objectives, directions


def show(root, runs: pd.DataFrame) -> None:
    st.title("Sweeps")
    database = inside(root, "studies.db")
    if database is None:
        st.info("No studies in this results store yet: run `bench sweep method=di_star`.")
        return
    url = f"sqlite:///{database}"
    names = optuna.get_all_study_names(url)
    if not names:
        st.info("No studies yet.")
        return
    name = st.selectbox("study", names)
    trials, objectives, directions = load_trials(url, name)
    st.caption(f"{len(trials)} trials: " + ", ".join(f"{n} {s}" for s, n in trials["state"].value_counts().items()))
    st.table(trials)
    complete = trials[trials["state"] == "complete"]
    if complete.empty:
        return
    if {"method.alpha_rew", "method.alpha_cfg"} <= set(complete):
        st.subheader(f"{plain(objectives[0])} over alpha_rew and alpha_cfg")
        chart = alt.Chart(complete).mark_circle(size=140).encode(
            x=alt.X("method.alpha_rew:Q", scale=alt.Scale(type="log"), title="alpha_rew"),
            y=alt.Y("method.alpha_cfg:Q", title="alpha_cfg"),
            color=alt.Color(f"{objectives[0]}:Q", scale=alt.Scale(scheme="viridis")),
            tooltip=["trial", objectives[0], "method.alpha_rew", "method.alpha_cfg"],
        )
        st.altair_chart(chart, width="stretch")
    if len(objectives) > 1:
        st.subheader("Pareto front")
        st.caption(plain(f"{objectives[0]} ({directions[0]}) against {objectives[1]} ({directions[1]}); the front is "
                         "marked."))
        st.altair_chart(alt.Chart(complete).mark_circle(size=120).encode(
            x=f"{objectives[0]}:Q", y=f"{objectives[1]}:Q", color="pareto:N", tooltip=["trial", *objectives],
        ), width="stretch")
    st.subheader(f"Parameter importance for {plain(objectives[0])}")
    study = optuna.load_study(study_name=name, storage=url)
    # PED-ANOVA asks which parameters lead to *low* targets: flip an objective that is maximised.
    sign = -1.0 if directions[0] == "maximize" else 1.0
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes the importances")
            importance = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(),
                target=lambda t: sign * t.values[0])
        st.bar_chart(pd.Series(importance, name="importance"))
    except (RuntimeError, ValueError) as err:
        st.info(plain(f"Not enough complete trials to estimate importance yet ({err})."))
