"""How the world talks to the engine: FastAPI app, WebSocket stream, HTTP endpoints."""
