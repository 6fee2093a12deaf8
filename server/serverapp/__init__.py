"""What Flower runs on the server side: the ServerApp (app), the partition-ordered grid
(federation), per-round checkpoints, OSFT's bases at each task start (osft_plan) and the
linear probes of the accuracy matrix (probe)."""
