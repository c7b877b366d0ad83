"""sdflow's Hydra plugins: the validating sweeper and the fused launcher (see sdflow_launcher.py)."""
