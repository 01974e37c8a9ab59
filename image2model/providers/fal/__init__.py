"""The hosted FAL.AI models: submit (provider.py), wait (watcher.py), find lost requests (reconcile.py)."""

from image2model.providers.fal.provider import FalProvider

__all__ = ["FalProvider"]
