"""The feedback service (DESIGN.md): FastAPI app (`app.create_app`), SQLite store (`store`),
HTTP client for the training loop (`client.FeedbackClient`), simulated labellers (`simulate`)
and the Ray Serve wrapper (`serve`, the only module that imports Ray)."""
