"""``python -m napari_milkd`` is the ``milkd`` command line."""

from napari_milkd.cli import main

raise SystemExit(main())
