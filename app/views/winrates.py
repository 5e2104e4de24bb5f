"""Win rates page (to be built)."""

import streamlit as st

st.title("Win rates")
