"""Studies: trials, the alpha_rew x alpha_cfg map of the objective, the Pareto front, parameter importance."""

from __future__ import annotations

import json
import os
import re
import warnings

import altair as alt
import numpy as np
import optuna
import pandas as pd
import streamlit as st

from dashboard.data import inside, plain
from sweeps.study import open_storage


def storages(root) -> list[str]:
    """Where studies may be: the store's studies.db, Optuna journal files in the store, and the URLs given to
    `bench dashboard --storage` (BENCH_STORAGES, one a line)."""
    found = []
    database = inside(root, "studies.db")
    if database is not None:
        found.append(f"sqlite:///{database}")
    for pattern in ("*.journal", "*.log"):
        found += [f"journal:{path}" for path in sorted(root.glob(pattern)) if is_journal(path)]
    found += [url for url in os.environ.get("BENCH_STORAGES", "").splitlines() if url.strip()]
    return list(dict.fromkeys(found))


def is_journal(path) -> bool:
    """An Optuna journal file: JSON lines, the first one an operation."""
    try:
        with open(path) as handle:
            return "op_code" in json.loads(handle.readline() or "{}")
    except (OSError, ValueError, UnicodeDecodeError):
        return False


@st.cache_resource(show_spinner=False)
def storage_of(url: str):
    return open_storage(url, heartbeat=10)


def shown(url: str) -> str:
    """A storage URL (or a message quoting one) without its password."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


@st.cache_data(show_spinner=False, ttl=10)
def load_trials(url: str, name: str) -> tuple[pd.DataFrame, list[str], list[str]]:
    study = optuna.load_study(study_name=name, storage=storage_of(url))
    objectives = [m for m, _ in study.user_attrs.get("objectives", [])] or ["value"]
    directions = [d.name.lower() for d in study.directions]
    front = {t.number for t in study.best_trials} if any(t.values for t in study.trials) else set()
    rows = []
    for t in study.trials:
        values = dict(zip(objectives, t.values, strict=True)) if t.values else {}
        rows.append({"trial": t.number, "state": t.state.name.lower(), **values, **t.params,
                     "pareto": t.number in front, "run": t.user_attrs.get("run_id")})
    return pd.DataFrame(rows), objectives, directions


def chart_field(name) -> str:
    """A field name Vega-Lite reads as written: it takes a dot for a nested field (so `method.alpha_rew` is read
    as nothing, and every point is dropped) and brackets for an index."""
    return str(name).replace(".", "_").replace("[", "(").replace("]", ")")


def chart_fields(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.rename(columns=chart_field)


def objective_map(complete: pd.DataFrame, objective: str, direction: str) -> None:
    """The trials as points, and beside them the objective filled in over a grid of log alpha_rew x alpha_cfg
    (the mean of the trials in each cell), which shows the shape that scattered points hide."""
    frame = chart_fields(complete.assign(log10_alpha_rew=np.log10(complete["method.alpha_rew"])))
    field = chart_field(objective)
    scheme = alt.Scale(scheme="viridis", reverse=direction == "minimize")  # bright is better either way
    points, filled = st.columns(2)
    points.altair_chart(alt.Chart(frame).mark_circle(size=140).encode(
        x=alt.X("method_alpha_rew:Q", scale=alt.Scale(type="log"), title="alpha_rew"),
        y=alt.Y("method_alpha_cfg:Q", title="alpha_cfg"),
        color=alt.Color(f"{field}:Q", scale=scheme, title=objective),
        tooltip=["trial", f"{field}:Q", "method_alpha_rew:Q", "method_alpha_cfg:Q", "run"],
    ), width="stretch")
    filled.altair_chart(alt.Chart(frame).mark_rect().encode(
        x=alt.X("log10_alpha_rew:Q", bin=alt.Bin(maxbins=8), title="log10 alpha_rew"),
        y=alt.Y("method_alpha_cfg:Q", bin=alt.Bin(maxbins=8), title="alpha_cfg"),
        color=alt.Color(f"mean({field}):Q", scale=scheme, title=f"mean {objective}"),
        tooltip=[alt.Tooltip(f"mean({field}):Q", title=f"mean {objective}"), alt.Tooltip("count():Q", title="trials")],
    ), width="stretch")


def show(root, runs: pd.DataFrame) -> None:
    st.title("Sweeps")
    urls = storages(root)
    if not urls:
        st.info("No studies in this results store yet: run `bench sweep method=di_star`, or name a storage with "
                "`bench dashboard --storage URL`.")
        return
    names_by_url = {}
    for candidate in urls:
        try:
            names_by_url[candidate] = optuna.get_all_study_names(storage_of(candidate))
        except Exception as err:  # a server down or a URL mistyped: say so and show the others
            st.warning(plain(shown(f"cannot read studies from {candidate}: {str(err).splitlines()[0]}")))
    listed = [(url, name) for url, names in names_by_url.items() for name in names]
    if not listed:
        st.info("No studies yet.")
        return
    wanted = st.query_params.get("study")
    choices = [f"{name}  ({shown(url)})" if len(names_by_url) > 1 else name for url, name in listed]
    at = next((i for i, (_, name) in enumerate(listed) if name == wanted), 0)
    url, name = listed[choices.index(st.selectbox("study", choices, index=at))]
    st.query_params["study"] = name
    trials, objectives, directions = load_trials(url, name)
    st.caption(f"{len(trials)} trials: " + ", ".join(f"{n} {s}" for s, n in trials["state"].value_counts().items()))
    st.dataframe(trials, hide_index=True)
    complete = trials[trials["state"] == "complete"]
    if complete.empty:
        return
    if {"method.alpha_rew", "method.alpha_cfg"} <= set(complete):
        st.subheader(f"{plain(objectives[0])} over alpha_rew and alpha_cfg")
        objective_map(complete, objectives[0], directions[0])
    if len(objectives) > 1:
        st.subheader("Pareto front")
        st.caption(plain(f"{objectives[0]} ({directions[0]}) against {objectives[1]} ({directions[1]}); the front is "
                         "marked."))
        first, second = chart_field(objectives[0]), chart_field(objectives[1])
        st.altair_chart(alt.Chart(chart_fields(complete)).mark_circle(size=120).encode(
            x=alt.X(f"{first}:Q", title=objectives[0]), y=alt.Y(f"{second}:Q", title=objectives[1]),
            color="pareto:N", tooltip=["trial", f"{first}:Q", f"{second}:Q", "run"],
        ), width="stretch")
    st.subheader(f"Parameter importance for {plain(objectives[0])}")
    study = optuna.load_study(study_name=name, storage=storage_of(url))
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
