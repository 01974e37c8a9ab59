"""image2model: photos in, 3D models out."""

__version__ = "0.1.0"
