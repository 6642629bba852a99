"""Singular-value spectra of weight matrices and the Kolmogorov-Smirnov distance between them: the
arithmetic PruneNet's policy (``search.criteria.prunenet``) trains on and its proxy
(``search.proxies.prunenet``) tabulates."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from search.adapters import Adapter, Block


def ffn_matrix(adapter: Adapter, layer: int) -> torch.Tensor:
    """The first FFN matrix of ``layer`` as (I, H), float64 on the CPU."""
    first = next(iter(adapter.linears(Block(layer, "mlp")).values()))
    return adapter.weight(first).detach().to("cpu", torch.float64)


def attention_columns(adapter: Adapter, layer: int) -> torch.Tensor:
    """The attention output projection's input columns as rows: (heads·d, H), float64 on the CPU."""
    return adapter.weight(adapter.attention_output(layer)).detach().to("cpu", torch.float64).t()


def ks_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup_x |F_a(x) − F_b(x)| (as scipy's ks_2samp)."""
    if a.numel() == 0 or b.numel() == 0:
        return 1.0
    a, b = torch.sort(a.double()).values, torch.sort(b.double()).values
    points = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, points, right=True).double() / a.numel()
    cdf_b = torch.searchsorted(b, points, right=True).double() / b.numel()
    return float((cdf_a - cdf_b).abs().max())


def spectrum(gram: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` singular values of a matrix with this Gram matrix (its top eigenvalues' roots)."""
    values = torch.linalg.eigvalsh(gram)  # ascending
    return values[-count:].clamp(min=0).sqrt() if count > 0 else values[:0]


@contextmanager
def one_cpu_thread() -> Iterator[None]:
    """Small CPU tensor work (H × H spectra, the meta-network's training) on one thread.

    On a shared CPU, several threads per small operation were measured 2-25× slower than one.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextmanager
def linear_algebra(device: torch.device) -> Iterator[torch.device]:
    """Where the spectra are computed: the model's GPU, or one CPU thread."""
    if device.type == "cuda":
        yield device
        return
    with one_cpu_thread():
        yield torch.device("cpu")


def kept_spectrum(rows: torch.Tensor, gram: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Singular values of ``rows[kept]`` from the full Gram matrix, subtracting whichever side is smaller."""
    count = min(len(kept), rows.shape[1])
    if len(kept) <= rows.shape[0] // 2:
        chosen = rows[kept]
        return spectrum(chosen.t() @ chosen, count)
    mask = torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device)
    mask[kept] = False
    dropped = rows[mask]
    return spectrum(gram - dropped.t() @ dropped, count)


def unit_rows(order: torch.Tensor, unit: int) -> torch.Tensor:
    return (order.unsqueeze(1) * unit + torch.arange(unit, device=order.device)).flatten()
