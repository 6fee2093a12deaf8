"""The API's routes, one module per resource; server.api.app includes each `router`."""
