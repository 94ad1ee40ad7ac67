"""A node: the scheduler, the parent side of the workers, and the loops that keep tasks alive."""
