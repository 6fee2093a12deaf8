"""What every process shares about runs: the metrics store, the run-folder layout, run
status, summaries, continual-learning metrics and the rules of resuming."""
