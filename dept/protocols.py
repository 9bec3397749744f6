"""The paper's three evaluation protocols, named once (as ``--protocol`` spells them), torch-free.

- ``base-to-new``: train on the base half of a dataset's classes, score base (fused head) and new (ITM head).
- ``cross-dataset``: train on all classes of a source (ImageNet), score other datasets' own classes (ITM head).
- ``domain-generalization``: train on the source, score shifted domains of its classes (fused head).

A dataset's group in the registry uses the same words: a base-to-new dataset, or a domain-generalisation target.
"""
from __future__ import annotations

BASE_TO_NEW = "base-to-new"
CROSS_DATASET = "cross-dataset"
DOMAIN_GENERALIZATION = "domain-generalization"
#: Every protocol, base-to-new first.
PROTOCOLS = (BASE_TO_NEW, CROSS_DATASET, DOMAIN_GENERALIZATION)
#: The protocols that train on a source and score targets.
TRANSFER_PROTOCOLS = (CROSS_DATASET, DOMAIN_GENERALIZATION)
#: The source dataset of the paper's transfer protocols.
DEFAULT_SOURCE = "ImageNet"


def check_protocol(protocol: str) -> str:
    """``protocol`` if it is one of :data:`PROTOCOLS`, else ``ValueError`` in one line naming them."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    return protocol


def is_transfer(protocol: str) -> bool:
    """Whether ``protocol`` trains on a source's classes and scores targets (not base-to-new)."""
    return check_protocol(protocol) != BASE_TO_NEW
