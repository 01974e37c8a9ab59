"""Offline "relief" generator: one image in, a closed, textured 3D model (GLB) out.

Pure CPU (numpy, scipy, OpenCV, Pillow, trimesh); no model weights, no network. The pipeline:

1. Separate the object (separation.py, segmentation.py, focus.py): the alpha channel if
   the image has a meaningful one; background removal grown in from the border when the
   border is plain; the sharp subject of a close-up against a blurred background; else the
   best-scoring of background removal and GrabCut seedings; a whole-frame plate when
   nothing stands out.
2. Choose the shape (revolve.py): an object whose outline is mirror-symmetric about an
   upright axis (a cup, a vase, a bottle) is spun round that axis, as deep as it is wide;
   what sticks out of the spun body (a handle) and every other object is puffed up.
3. Puff up (mesh.py): a front and a back sheet on a lattice over the object, sharing
   their boundary (the silhouette), so the result is closed. Each mask cell is a fan of
   8 triangles around its centre; that layout has no edge joining two silhouette vertices
   across the inside, so the shell is always manifold. Height follows a rounded profile
   of the distance to the silhouette, plus an optional brightness relief on the front.
4. Texture (texture.py): the front shows the photo (UV = photo position); the back,
   which the photo does not show, takes each row's typical object colour from a strip
   beside the photo, so nothing appears mirrored.
5. Place as glTF expects (Y up, facing +Z, centred, largest dimension 1) and export GLB.

One module per stage; the parameters and their checks live in params.
"""

from __future__ import annotations

import importlib
from typing import Any

from image2model.providers.relief.params import RELIEF_PARAMS

__all__ = ["RELIEF_PARAMS", "SOURCE_MAX_SIDE", "STAGES", "TEXTURE_MAX_SIDE", "ReliefResult", "generate_relief", "load_image"]

# name -> the module that defines it, loaded on first use: the stages load OpenCV and SciPy
# (about 20 MB), which the web process, reading only the parameters, never needs.
_LAZY = {"SOURCE_MAX_SIDE": "loading", "load_image": "loading", "STAGES": "pipeline", "TEXTURE_MAX_SIDE": "texture",
         "ReliefResult": "pipeline", "generate_relief": "pipeline"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
