"""The Streamlit leaderboard (not yet built: see the open dashboard issue)."""
