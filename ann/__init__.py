"""mlc.ann: the ann-index stage (vector-quantization nearest-neighbour indexes).

Quantizers (PQ with optional rotation, RVQ, IRVQ, DA), ADC search (flat scan, E-Tree/E-Forest,
A-Tree beam search, exact re-ranking), the search emitted as tensor programs, a versioned
binary index file, and the `mlc ann-index` commands.
"""

from .index import MODES, AnnIndex
from .index_file import read_index, write_index
from .io import read_vectors, write_vectors
from .quantizer import Quantizer, quantizer_class

__all__ = ["MODES", "AnnIndex", "Quantizer", "quantizer_class", "read_index", "write_index", "read_vectors",
           "write_vectors"]
