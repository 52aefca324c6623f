"""Evaluation: coarse retrieval scoring and recall metrics."""
