"""The Streamlit leaderboard: `bench dashboard` serves app.py; views/ has one module a page."""
