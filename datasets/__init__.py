"""Datasets by config name.

DATASETS maps a name to its loader, which returns the arrays described in datasets/mnist.py.
INFO gives what can be known without loading anything: the shape of one example as the
network receives it, the number of classes, the shape to draw an example in, and the class
names. The engine checks a network against INFO before anything is downloaded.
"""
from collections import namedtuple

from datasets.mnist import CLASS_NAMES, load_mnist

Info = namedtuple("Info", "input_shape num_classes image_shape class_names")

DATASETS = {"mnist": load_mnist}
INFO = {"mnist": Info((784,), 10, (28, 28), CLASS_NAMES)}
