"""Federated data: sources -> partitioners -> padded per-client arrays."""

from fedjax_comp.data.examples import Examples, SourceData
from fedjax_comp.data.federated import (DATASETS, ClientArrays, FederatedDataset,
                                        load_federated, load_source, partition_source,
                                        to_client_arrays)
from fedjax_comp.data.federated_files import FILE_DATASETS
from fedjax_comp.data.partition import PARTITIONS

__all__ = [
    "DATASETS", "FILE_DATASETS", "PARTITIONS", "ClientArrays", "Examples", "FederatedDataset", "SourceData",
    "load_federated", "load_source", "partition_source", "to_client_arrays",
]
