"""Run orchestration shared by the CLI and the API worker: scenario checks, Flower's
launch and teardown (launcher), progress and summary tables (progress), execution."""
