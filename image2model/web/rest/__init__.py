"""REST API v1 (api.py): uploads, status, SSE streams, downloads, and /metrics."""
