"""napari sample-data contribution: the synthetic H&E sample slide, opened through OpenSlide.

Owns turning :mod:`napari_milkd.core.slides.sample` into layers: the slide (a real pyramidal TIFF,
generated into the cache folder on first use) and the outline of its known tumour region. The first
use takes a few seconds on napari's main thread: a notification says so and a napari progress bar
follows the generation (napari imported then only, so that importing this module stays light).
"""

from __future__ import annotations

from napari_milkd._layers import LayerDataTuple, outline_layer, slide_image_layer
from napari_milkd._preload import preload_core
from napari_milkd.core.slides.sample import GENERATION_STEPS, ensure_sample_slide, sample_slide_exists
from napari_milkd.core.slides.slide import open_slide

SAMPLE_LAYER_NAME = "milkd synthetic sample"
TRUTH_LAYER_NAME = "true tumour (sample)"
GENERATING = "generating the synthetic sample slide (first use, a few seconds)…"


def _generate_with_progress() -> None:
    """Generate the sample slide under a notification and a napari progress bar."""
    from napari.utils import progress
    from napari.utils.notifications import show_info

    show_info(f"milkd: {GENERATING}")
    with progress(total=len(GENERATION_STEPS), desc="milkd sample") as bar:

        def step(text: str) -> None:
            done = GENERATION_STEPS.index(text)
            bar.update(done - bar.n)
            bar.set_description(f"milkd sample: {text}")

        ensure_sample_slide(on_step=step)


def make_sample_slide() -> list[LayerDataTuple]:
    """The sample slide as a multiscale image layer plus a Shapes layer outlining the true tumour."""
    if not sample_slide_exists():
        _generate_with_progress()
    sample = ensure_sample_slide()
    source = open_slide(sample.path)
    truth = outline_layer([sample.tumour_polygon_l0], source, TRUTH_LAYER_NAME, color="#00e5ff")
    truth[1]["visible"] = False
    layers = [slide_image_layer(source, name=SAMPLE_LAYER_NAME), truth]
    preload_core()  # the dock's core, imported before the user opens it
    return layers
