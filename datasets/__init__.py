"""Datasets by config name: each loader returns the arrays described in datasets/mnist.py.

SHAPES gives, per dataset, the shape of one example and the number of classes, so a network
can be checked against the data before anything is downloaded.
"""
from datasets.mnist import load_mnist

DATASETS = {"mnist": load_mnist}
SHAPES = {"mnist": ((784,), 10)}
