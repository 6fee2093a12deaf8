"""The deployment node process: a warm SuperNode and its polling."""
