"""The leaderboard app: `bench dashboard` serves this file with Streamlit."""

import streamlit as st

from dashboard import data
from dashboard.views import compare, frontier, leaderboard, run, sweeps

PAGES = {"Leaderboard": leaderboard.show, "Frontier": frontier.show, "Run": run.show, "Compare": compare.show,
         "Sweeps": sweeps.show}

st.set_page_config(page_title="One-step alignment bench", layout="wide")
root = data.results_root()
requested = st.query_params.get("page", "Leaderboard")
page = st.sidebar.radio("page", list(PAGES), index=list(PAGES).index(requested) if requested in PAGES else 0)
st.sidebar.caption(f"results: {data.plain(root)}")
runs, warnings = data.load_runs(str(root), data.stamp(root))
for warning in warnings:
    st.warning(data.plain(warning))
PAGES[page](root, runs)
