"""Reference lookup: FAISS indices over embeddings, the reference folder, and querying new cells against it.

The public API is re-exported here (``from omicsclip.index import run_query``); code inside the package imports
from the submodules (``omicsclip.index.query``) so that no import cycle can form. This layer may import
:mod:`omicsclip.io`, :mod:`omicsclip.model` and :mod:`omicsclip.train`, never heads, evaluation, report or the
CLI.
"""

from omicsclip.index.engine import ChunkResult, QueryEngine, QuerySettings
from omicsclip.index.faiss_index import (
    KINDS,
    METRIC,
    IndexParams,
    build_index,
    factory_string,
    gpu_enabled,
    resolve_params,
    search,
    set_threads,
)
from omicsclip.index.from_embeddings import index_embeddings
from omicsclip.index.impute import confidence, impute, knn_impute, neighbour_weights, vote
from omicsclip.index.matching import check_features, match_report
from omicsclip.index.query import QueryResult, query, run_query
from omicsclip.index.query_input import open_query_input
from omicsclip.index.query_writers import H5adAppender, TableWriter
from omicsclip.index.reference import ReferenceIndex, write_index_dir

__all__ = [
    "KINDS",
    "METRIC",
    "ChunkResult",
    "H5adAppender",
    "IndexParams",
    "QueryEngine",
    "QueryResult",
    "QuerySettings",
    "ReferenceIndex",
    "TableWriter",
    "build_index",
    "check_features",
    "confidence",
    "factory_string",
    "gpu_enabled",
    "impute",
    "index_embeddings",
    "knn_impute",
    "match_report",
    "neighbour_weights",
    "open_query_input",
    "query",
    "resolve_params",
    "run_query",
    "search",
    "set_threads",
    "vote",
    "write_index_dir",
]
