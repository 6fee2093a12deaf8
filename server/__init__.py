"""orthofed's server side, one sub-package per process and one shared layer:

serverapp/  what Flower runs (the ServerApp and what it needs each round)
cli/        what runs in the user's terminal (`orthofed ...`, launching Flower)
api/        what runs in the API process (`orthofed serve`: FastAPI, queue, submission)
runs/       what they share: the store, run folders, run status, summaries, resume
"""
