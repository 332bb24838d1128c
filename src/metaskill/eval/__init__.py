"""Evaluation: Solvers, the batched resumable harness, the run store and reports."""
