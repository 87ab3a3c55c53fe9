"""Data sets, each split held as one tensor on one device (:class:`DataSplit`).

=============  ===============================================================================
``sets``       the sources (MNIST family through torchvision, Frey Face, synthetic PPCA and toy
               sets) by name in :data:`DATASETS`, and :func:`load_dataset` / :func:`load_splits`
``splits``     :class:`DataSplit`: minibatches as index slices, static and dynamic binarization
``cache``      where the files are read from (the data dir) and extracted to (the cache); what is
               checked in them (md5, idx header and size, cache entries keyed on their source)
=============  ===============================================================================
"""
from ..errors import DataError, DataNotFoundError
from .cache import cache_dir, resolve_data_dir
from .sets import (DATASETS, frey_split_indices, is_image_dataset, load_dataset, load_frey, load_mnist_like,
                   load_splits, ppca_data, toy_data)
from .splits import BINARIZE_MODES, SPLITS, DataSplit

__all__ = ["DATASETS", "BINARIZE_MODES", "SPLITS", "DataSplit", "DataError", "DataNotFoundError", "cache_dir",
           "resolve_data_dir", "frey_split_indices", "is_image_dataset", "load_dataset", "load_frey",
           "load_mnist_like", "load_splits", "ppca_data", "toy_data"]
