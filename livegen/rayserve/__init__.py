"""livegen on Ray Serve: the same FastAPI app and engine in every replica (docs/deploying.md).

Ray is an optional extra (`pip install livegen[ray]`); nothing outside this package imports it.
"""
