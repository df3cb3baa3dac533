"""Reading CITE-seq inputs, the paired zarr store, ingest, splits and the small file helpers every stage uses.

The public API is re-exported here (``from omicsclip.io import open_input``); code inside the package imports
from the submodules (``omicsclip.io.readers``) so that no import cycle can form. This layer imports only
:mod:`omicsclip.errors`, :mod:`omicsclip.config` and :mod:`omicsclip.conventions` from omicsclip, never a later
stage.
"""

from omicsclip.io.anndata_input import MatrixTable, natural_chunk_rows, open_anndata
from omicsclip.io.atomic import atomic_path, check_writable
from omicsclip.io.features import DEFAULT_HTO_PATTERNS, DEFAULT_ISOTYPE_PATTERNS
from omicsclip.io.formats import FORMATS, detect_format
from omicsclip.io.hashing import sha256_file, sha256_tree
from omicsclip.io.ingest import ingest, ingest_from_config, ingest_source
from omicsclip.io.jsonfile import dumps_json, jsonable, read_json, read_json_object, write_json
from omicsclip.io.paired import PairedData
from omicsclip.io.readers import InputSource, open_input, reader_options
from omicsclip.io.split import SPLITS, make_split, read_split, write_split
from omicsclip.io.store import StoreWriter, iter_store, read_store, store_info, write_store
from omicsclip.io.summary import format_summary, inspect_store
from omicsclip.io.synthetic import SynthParams, iter_synthetic, make_synthetic, write_synthetic_h5ad
from omicsclip.io.tsv import read_tsv, to_tsv

__all__ = [
    "DEFAULT_HTO_PATTERNS",
    "DEFAULT_ISOTYPE_PATTERNS",
    "FORMATS",
    "SPLITS",
    "InputSource",
    "MatrixTable",
    "PairedData",
    "StoreWriter",
    "SynthParams",
    "atomic_path",
    "check_writable",
    "detect_format",
    "dumps_json",
    "format_summary",
    "ingest",
    "ingest_from_config",
    "ingest_source",
    "inspect_store",
    "iter_store",
    "iter_synthetic",
    "jsonable",
    "make_split",
    "make_synthetic",
    "natural_chunk_rows",
    "open_anndata",
    "open_input",
    "read_json",
    "read_json_object",
    "read_split",
    "read_store",
    "read_tsv",
    "reader_options",
    "sha256_file",
    "sha256_tree",
    "store_info",
    "to_tsv",
    "write_json",
    "write_split",
    "write_store",
    "write_synthetic_h5ad",
]
