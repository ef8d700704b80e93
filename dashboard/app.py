"""The leaderboard app: `bench dashboard` serves this file with Streamlit."""

import streamlit as st

from dashboard import data
from dashboard.views import compare, frontier, leaderboard, prompts, run, sweeps

PAGES = {"Leaderboard": leaderboard.show, "Frontier": frontier.show, "Run": run.show, "Compare": compare.show,
         "Prompts": prompts.show, "Sweeps": sweeps.show}

st.set_page_config(page_title="One-step alignment bench", layout="wide")
root = data.results_root()
# Deep links name a page in any case: ?page=compare&runs=A,B, ?page=run&run=A.
names = [name.lower() for name in PAGES]
requested = st.query_params.get("page", "leaderboard").lower()
page = st.sidebar.radio("page", list(PAGES), index=names.index(requested) if requested in names else 0)
st.query_params["page"] = page.lower()
st.sidebar.caption(f"results: {data.plain(root)}")
runs, warnings = data.load_runs(str(root), data.stamp(root))
for warning in warnings:
    st.warning(data.plain(warning))
PAGES[page](root, runs)
