"""Anomaly detection methods: one folder per method, torch models separate from training logic."""
