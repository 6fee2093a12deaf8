"""Task data: loading and partitioning (flwr-datasets), prompts, synthetic tasks."""
