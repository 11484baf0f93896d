"""The study's configs, one file per model, loaded by path (`--config=configs/b_pp.py:quick`).

A package, so that the data tools find them when fer_jax is installed rather than checked out.
"""
