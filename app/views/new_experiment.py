"""New experiment page (to be built)."""

import streamlit as st

st.title("New experiment")
