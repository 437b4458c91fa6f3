"""Simulation: MuJoCo FR3 scene with three RGB-D cameras (franka)."""
