"""Training: losses, the shared trainer skeleton (loop.py) and the PointNet++, coarse and fine
trainers, on top of the core."""
