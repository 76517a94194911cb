"""Leaderboard: metrics, the predictions and results formats, submission checks and tables."""
