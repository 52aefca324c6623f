"""Training: losses, trainers and feature caches."""
