"""Keys of the messages between the ServerApp and the ClientApps, in one place.

Kebab-case like Flower's own (`num-examples`, `server-round`).
"""

# ConfigRecord sent with a train instruction (besides Flower's "server-round").
SERVER_ROUND = "server-round"
TASK_ID = "task-id"
FROZEN_FINGERPRINT = "frozen-fingerprint"

# Extra ArrayRecords of a train instruction in a task stream: the merged base weights of
# LoRA methods (earlier tasks' adapters folded in), and OSFT's preserved bases, two
# arrays per target weight named "<parameter>" + BASIS_U / BASIS_V.
BASE_WEIGHTS = "base-weights"
OSFT_BASES = "osft-bases"
BASIS_U, BASIS_V = "|u-high", "|v-high"
# fedsvd-osft: the LoRA A factors a task starts from (in the complement of the preserved
# right subspaces). Saved with the task's start, applied to the global model, not sent.
LORA_A_START = "lora-a-start"

# Record names in instructions and replies.
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
CLIENT = "client"

# MetricRecord of a train reply (averaged by the strategy, weighted by num-examples).
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
LOCAL_EVAL_ACC = "local-eval-acc"
LOCAL_EVAL_LOSS = "local-eval-loss"

# DP-SGD clients (clients.training.privacy): spent budget and the accountant's inputs; a client
# whose next round would pass its budget replies with REFUSED = 1 and trains nothing.
EPSILON = "epsilon"
NOISE_MULTIPLIER = "noise-multiplier"
SAMPLE_RATE = "sample-rate"
DP_STEPS = "dp-steps"
REFUSED = "refused"
# 1 when the noise was seeded from the scenario (privacy.reproducible_noise_voids_guarantee:
# no guarantee), 0 when it came from OS entropy: the run records which it used.
SEEDED_NOISE = "seeded-noise"
# privacy.report_dp_diagnostics (clients.training.dp_diagnostics): computed without noise, named
# so; the share of examples whose gradient was clipped, and mean ||noise|| / ||clipped sum||.
UNNOISED_CLIPPED_FRACTION = "unnoised-clipped-fraction"
UNNOISED_NOISE_TO_SIGNAL = "unnoised-noise-to-signal"

# context.state of a client node: its privacy ledger (clients.training.privacy.PrivacyState).
PRIVACY_STATE = "privacy"

# ConfigRecord "client" of a reply: who replied, on what. Not averaged.
PARTITION_ID = "partition-id"
DEVICE = "device"
NODE = "node"  # where the client ran: its Ray node's IP in a simulation, else the host name

# Train metrics of a round, measured by strategies.recording from the messages: the
# arrays' bytes of one client's train instruction and (mean) of one client's reply.
BYTES_DOWN = "bytes-down-per-client"
BYTES_UP = "bytes-up-per-client"

# Metrics of the server-side evaluation of the global model.
EVAL_ACC = "eval-acc"
EVAL_LOSS = "eval-loss"
# The same on the validation split (data.validation_fraction > 0): rows carved out of the
# training data that no client sees, for tuning without reading the test split.
VAL_ACC = "val-acc"
VAL_LOSS = "val-loss"
