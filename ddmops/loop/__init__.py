"""What every long loop shares: learning-rate schedules and cadences, resumable
checkpoints, the non-finite-loss guard, progress bars and data parallelism."""
