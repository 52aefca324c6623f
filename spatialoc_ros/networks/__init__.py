"""Neural network modules of SpatiaLoc (text encoder, object encoder, coarse and fine stages)."""
