"""exactcompress: exact compression of ReLU networks by neuron stability.

import exactcompress as ec
result = ec.compress("model.pt", ec.Box.uniform(784), data=x_train)
result.module          # the compressed nn.Sequential
result.report.counts() # stably active / inactive / unstable / undecided
"""

from .api import CompressionResult, compress
from .domain import Box
from .errors import ExactCompressError
from .io import load_model_file, load_network, save_model
from .network import ReLUNetwork
from .prune import compress as prune
from .report import StabilityReport
from .stability import StabilityOptions, find_stable_neurons
from .verify import verify

__all__ = [
    "Box",
    "CompressionResult",
    "ExactCompressError",
    "ReLUNetwork",
    "StabilityOptions",
    "StabilityReport",
    "compress",
    "find_stable_neurons",
    "load_model_file",
    "load_network",
    "prune",
    "save_model",
    "verify",
]
