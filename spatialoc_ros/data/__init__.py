"""Data: the KITTI360Pose format (reader, writer, restricted unpickler), the synthetic city and its
benchmark generation, statistics and pictures."""
