"""Datasets by config name.

`dataset_info(config)` tells what can be known before loading anything: the shape of one
example as the network receives it, the number of classes, the shape to draw an example in,
and the class names; the engine checks the network against it before any download.
`load_dataset(config, log)` returns the arrays described in datasets/mnist.py.
"""
from collections import namedtuple

from datasets.mnist import CLASS_NAMES, load_mnist

Info = namedtuple("Info", "input_shape num_classes image_shape class_names")

DATASETS = {"mnist": (Info((784,), 10, (28, 28), CLASS_NAMES), load_mnist)}


def dataset_info(config):
    return DATASETS[config["dataset"]][0]


def load_dataset(config, log=None):
    return DATASETS[config["dataset"]][1](config["data_dir"], log=log)
