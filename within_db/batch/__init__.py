"""Bulk writes, streaming reads, dataframes and parallel reads for batch ML jobs.

The contract here is throughput: ``bulk_insert`` (bulk.py) against raw COPY/executemany,
``stream``/``to_dataframe`` (stream.py) against raw fetchmany, ``to_arrow`` (arrow.py) typed
record batches for Parquet and lake engines, ``partitions``/``to_dask``
(parallel.py) for reads split over processes. Import from ``within_db.batch``.
"""

from within_db.batch.arrow import DEFAULT_ARROW_BATCH, to_arrow
from within_db.batch.bulk import DEFAULT_BATCH, Row, bulk_insert
from within_db.batch.parallel import MAX_PARTITIONS, KeyRange, partitions, to_dask
from within_db.batch.stream import DEFAULT_CHUNK, stream, to_dataframe

__all__ = [
    "DEFAULT_ARROW_BATCH", "DEFAULT_BATCH", "DEFAULT_CHUNK", "KeyRange", "MAX_PARTITIONS", "Row",
    "bulk_insert", "partitions", "stream", "to_arrow", "to_dask", "to_dataframe",
]
