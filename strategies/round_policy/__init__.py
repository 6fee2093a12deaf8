"""What the recording wrapper (strategies.recording) is given to decide besides
recording: which clients a round samples (sampling), which privacy ledgers go back to
them (ledger_relay), whether a round had enough results (quorum), and whether the run
has run out of clients willing to train (budget_watch). Built by the ServerApp."""
