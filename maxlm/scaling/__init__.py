"""Scaling laws: sweeps over model size and tokens, and the fits that read them.

Modules: chinchilla (Approach 3, L(N, D)), isoflop (Approach 2, N_opt(C)),
kaplan (L(C)), sweep (shapes and points), runs (manifest, run, collect),
plots (PNG; imported on demand so fits need no matplotlib), cli. The fits use
numpy and scipy only, never the model or jax.
"""
from maxlm.scaling import chinchilla, isoflop, kaplan, runs, sweep
