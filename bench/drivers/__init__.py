"""Callers for the peer systems; they run in the peers' venv (see bench/peers.py)."""
