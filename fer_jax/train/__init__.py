"""Training: the loop of one run (loop.py), its jitted steps, optimiser, checkpoints, history and
workdir guard."""
