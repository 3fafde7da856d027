"""Evaluation of CG simulations against the AA reference, and reports."""
