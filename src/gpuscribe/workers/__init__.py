"""Workers: one process per device holding loaded models, and the engines they run."""
