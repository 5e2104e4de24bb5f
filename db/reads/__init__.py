"""Read queries for the app's pages and for exports: plain functions of a Connection
returning lists of dicts (or DataFrame-ready records), one module per page area."""
