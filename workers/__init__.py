"""The worker daemon and the ``sami`` command line.

Imports db/ and, for stages, starts sami_core as subprocesses: nothing here imports
torch or transformers (tests/unit/test_queue_layers.py checks it).
"""
