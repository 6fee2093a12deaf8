"""What runs in the API process (`orthofed serve`): the FastAPI app (app, one router per
resource under routers/, dependencies), its response models, the settings, the queue
that starts queued runs, the checks a posted scenario goes through (submission,
confinement), and the dashboard page."""
