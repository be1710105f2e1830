"""The training loop: the Trainer subclasses, stage losses, GradCache, the temperature clamp, the teacher and
feature caches, zero-shot scoring, distributed back-ends, and what a run saves and reports."""
