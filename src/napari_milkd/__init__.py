"""napari-milkd: tumour masks on whole-slide images from coarse labels.

Importing the package is cheap: it loads neither torch nor napari (tests check this).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
