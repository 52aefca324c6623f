"""Training: losses, the shared trainer skeleton and the PointNet++, coarse and fine trainers (on top of the core)."""
