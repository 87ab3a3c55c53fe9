"""Data sets, each split held as one tensor on one device (:class:`DataSplit`).

=============  ===============================================================================
``sets``       the sources (MNIST family through torchvision, Frey Face, synthetic PPCA and toy
               sets) by name in :data:`DATASETS`, and :func:`load_dataset` / :func:`load_splits`
``splits``     :class:`DataSplit`: minibatches as index slices, static and dynamic binarization,
               the bit depth of what the model sees (``bits``)
``streaming``  :class:`StreamingSplit`: the same minibatches streamed from the host through a
               DataLoader (data that does not fit on the device, or ``in_memory = false``)
``sources``    examples read one at a time and :class:`Source`, what the loaders of a user's data
               return; the seeded train/test split of sets whose files have none
``folder``     ``folder``: an image folder (torchvision's ImageFolder), grayscale or RGB
``arrays``     ``arrays``: an ``.npz``/``.npy`` file, never unpickled
``vision``     ``cifar10`` and ``svhn`` in torchvision's file formats (a restricted unpickler)
``cache``      where the files are read from (the data dir) and extracted to (the cache); what is
               checked in them (md5, idx header and size, cache entries keyed on their source)
=============  ===============================================================================
"""
from ..errors import DataError, DataNotFoundError
from .cache import cache_dir, resolve_data_dir
from .sets import (DATASETS, OPTION_DEFAULTS, frey_split_indices, is_image_dataset, load_dataset, load_frey, load_mnist_like,
                   load_splits, ppca_data, toy_data)
from .sources import Source
from .splits import BINARIZE_MODES, SPLITS, DataSplit, levels
from .streaming import StreamingSplit

__all__ = ["DATASETS", "BINARIZE_MODES", "SPLITS", "DataSplit", "StreamingSplit", "Source", "levels", "DataError", "DataNotFoundError", "cache_dir",
           "resolve_data_dir", "OPTION_DEFAULTS", "frey_split_indices", "is_image_dataset", "load_dataset", "load_frey",
           "load_mnist_like", "load_splits", "ppca_data", "toy_data"]
