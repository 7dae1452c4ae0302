"""napari sample-data contribution: the synthetic H&E sample slide, opened through OpenSlide.

Owns turning :mod:`napari_milkd.core.slides.sample` into layers: the slide (a real pyramidal TIFF,
generated into the cache folder on first use) and the outline of its known tumour region.
"""

from __future__ import annotations

from napari_milkd._layers import LayerDataTuple, outline_layer, slide_image_layer
from napari_milkd.core.slides.sample import ensure_sample_slide
from napari_milkd.core.slides.slide import open_slide

SAMPLE_LAYER_NAME = "milkd sample slide"
TRUTH_LAYER_NAME = "true tumour (sample)"


def make_sample_slide() -> list[LayerDataTuple]:
    """The sample slide as a multiscale image layer plus a Shapes layer outlining the true tumour."""
    sample = ensure_sample_slide()
    source = open_slide(sample.path)
    truth = outline_layer([sample.tumour_polygon_l0], source, TRUTH_LAYER_NAME, color="#00e5ff")
    truth[1]["visible"] = False
    return [slide_image_layer(source, name=SAMPLE_LAYER_NAME), truth]
