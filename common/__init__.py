"""Pieces several jobs (training, evaluation, hub, demo) share; no job imports another job, they all import this."""
