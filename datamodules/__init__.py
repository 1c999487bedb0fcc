"""privzoo datamodules: MNIST, Fashion-MNIST, CIFAR-10, CelebA, ImageNet subsets (batches: see ``base``)."""

from .base import TensorImageDataset, VisionDataModule, passthrough_collate
from .celeba import CELEBA_ATTRIBUTE_NAMES, CelebADataModule
from .cifar10 import CIFAR10DataModule
from .errors import DatasetCorruptedError, DatasetError, DatasetNotFoundError, DatasetNotWritableError
from .imagenet import ImageNetSubsetDataModule
from .mnist import DEBIAN_FASHION_MNIST_DIR, FashionMNISTDataModule, MNISTDataModule

__all__ = [
    "CELEBA_ATTRIBUTE_NAMES",
    "CIFAR10DataModule",
    "CelebADataModule",
    "DEBIAN_FASHION_MNIST_DIR",
    "DatasetCorruptedError",
    "DatasetError",
    "DatasetNotFoundError",
    "DatasetNotWritableError",
    "FashionMNISTDataModule",
    "ImageNetSubsetDataModule",
    "MNISTDataModule",
    "TensorImageDataset",
    "VisionDataModule",
    "passthrough_collate",
]
