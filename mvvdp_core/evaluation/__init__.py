"""Closed-loop evaluation in simulation and the Meta-World harness: they drive sim, data, train and policy."""
