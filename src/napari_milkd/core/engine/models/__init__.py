"""Pure ``nn.Module`` models: the DWS-MIL and SA-MIL nets over pluggable encoders, and their factory.

Importing this package imports torch; ``napari_milkd`` and ``napari_milkd.core`` never import it.
"""

from __future__ import annotations

from pathlib import Path

from napari_milkd.core.engine.models.dws_mil import DWSMILNet, SegOutput, fuse_logits
from napari_milkd.core.engine.models.encoders import ENCODERS
from napari_milkd.core.engine.models.sa_mil import SAMILNet
from napari_milkd.core.errors import InputError

__all__ = ["ENCODERS", "NETS", "DWSMILNet", "SAMILNet", "SegOutput", "build_model", "fuse_logits"]

#: The MIL segmentation nets by name (``TrainConfig.net``), the default first.
NETS: dict[str, type[DWSMILNet]] = {"dws_mil": DWSMILNet, "sa_mil": SAMILNet}


def build_model(
    backbone: str,
    weights: str | Path = "default",
    fusion_weights: tuple[float, float, float] = (0.3, 0.3, 0.4),
    net: str = "dws_mil",
) -> DWSMILNet:
    """Build the MIL segmentation net ``net`` (:data:`NETS`: ``dws_mil`` or ``sa_mil``) on ``backbone``
    (``vgg16``, ``efficientnet_lite0`` or ``tiny``).

    ``weights``: ``"default"`` (ImageNet for vgg16/efficientnet_lite0, random for tiny), ``"imagenet"``,
    ``"random"`` (explicit random init), or a path to a weights file in the backbone's published layout.
    Raises :class:`InputError` for an unknown backbone, :class:`CheckpointError` for unreadable weights.
    """
    if backbone not in ENCODERS:
        raise InputError(f"unknown backbone {backbone!r}; choose one of {', '.join(ENCODERS)}")
    if net not in NETS:
        raise InputError(f"unknown MIL net {net!r}; choose one of {', '.join(NETS)}")
    encoder = ENCODERS[backbone]()
    choice = str(weights)
    if choice == "default":
        choice = "random" if backbone == "tiny" else "imagenet"
    if choice != "random":
        encoder.load_pretrained(choice)  # type: ignore[operator]
    return NETS[net](encoder, fusion_weights)
