"""Datasets as in-memory uint8 tensors, augmentation on the device, and NAS-Bench-201 splits.

Why this shape: CIFAR-sized data fits in memory many times over, so a whole split lives in one
``uint8`` tensor on the training device. Batching, random crops and flips are then a few
vectorised tensor ops per batch (no ``DataLoader``, no per-image Python), and every random draw
comes from one seeded ``torch.Generator`` whose state is checkpointed with the trial.

Sources (``load_dataset``):

* a torchvision CIFAR root: the ``cifar-10-batches-py`` / ``cifar-100-python`` folder or the
  folder that contains it (``download=True`` lets torchvision fetch it);
* an ImageFolder layout ``{train,test}/<class>/*.jpg|png`` as a directory (or a folder holding
  exactly one such directory) or as a ``.tar`` / ``.tar.gz`` / ``.tgz`` archive of one;
* ``synthetic``: generated from a seed, no files.

ImageFolder sources are decoded once and cached as one ``.npz`` per source under
``<cache_dir>/datasets``, keyed by a hash of the source's absolute path, size and mtime (for a
directory: of every image file). ``Dataset.from_cache`` says whether a load was a cache hit.
This module must not import ray: methods, benchmarks and tests import it too.
"""
from harness.data.batches import (Batches, augment, fixed_batches, normalize, random_batch, search_split,
                                  stratified_subset)
from harness.data.sources import default_cache_dir, load_dataset, synthetic_dataset
from harness.data.values import CIFAR10_CLASSES, CIFAR100_CLASSES, DATASETS, DataError, Dataset, ImageSet

__all__ = ["Batches", "CIFAR10_CLASSES", "CIFAR100_CLASSES", "DATASETS", "DataError", "Dataset", "ImageSet", "augment",
           "default_cache_dir", "fixed_batches", "load_dataset", "normalize", "random_batch", "search_split",
           "stratified_subset", "synthetic_dataset"]
