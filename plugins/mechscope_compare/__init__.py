"""Comparisons between networks: DSA, shape metrics and fixed-point topology.

Each comparison is two pure functions on arrays: a per-network ``*_represent`` (the costly
part, computed once per run) and a pairwise ``*_distance`` that batches over pairs with
``jax.vmap``. Statistics on the resulting distance matrices live in :mod:`._stats`.
"""
