"""The service's shared layer: settings, tables, sessions, storage, the broker client and job state changes.

The API and the worker both import this package; it never imports FastAPI, torch or the engine.
"""
