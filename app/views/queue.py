"""Queue page (to be built)."""

import streamlit as st

st.title("Queue")
