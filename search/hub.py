"""Whether a hub id can be loaded here: from the local Hugging Face cache, or from a reachable hub.

Torch-free, for the check at submission. The offline switches (``HF_HUB_OFFLINE``,
``TRANSFORMERS_OFFLINE``), the cache folder and the endpoint are huggingface_hub's own settings,
read through its ``constants``: the same ones the worker's ``from_pretrained`` obeys.
"""

from __future__ import annotations

import socket
import threading
import time
from urllib.parse import urlsplit

from huggingface_hub import constants

from search.errors import InvalidJobSpec

# A reachable hub accepts a connection well within this; an unreachable one must not stall a submission.
PROBE_TIMEOUT_S = 1.0
# A probe's verdict is reused this long, so a burst of submissions probes once.
PROBE_TTL_S = 30.0
_probes: dict[str, tuple[float, bool]] = {}


def check_hub_model(model: str, revision: str | None) -> None:
    """Refuse a hub id that a worker here could neither find in the cache nor download.

    Such an id is usually a mistyped relative path (``models/ref-llama-70m``), so the message names
    both readings.
    """
    if is_cached(model, revision):
        return
    reason = unreachable_reason()
    if reason is not None:
        raise InvalidJobSpec(
            f"model {model!r}: no such directory; not a cached hub model, and the hub cannot be reached ({reason})"
        )


def is_cached(repo_id: str, revision: str | None) -> bool:
    """The model's ``config.json`` is in the local hub cache (what an offline load reads first)."""
    # Imported here: huggingface_hub's download module takes half a second to import, which the
    # API's start-up need not pay.
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except ValueError:  # an id the hub itself would refuse ("a--b", "a..b"): never cached
        return False
    return isinstance(found, str)


def unreachable_reason() -> str | None:
    """Why the hub cannot be reached from here, or ``None`` when it accepts a connection."""
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set"
    if not _answers(constants.ENDPOINT):
        return f"{constants.ENDPOINT} does not answer"
    return None


def _answers(endpoint: str) -> bool:
    now = time.monotonic()
    earlier = _probes.get(endpoint)
    if earlier is not None and now - earlier[0] < PROBE_TTL_S:
        return earlier[1]
    url = urlsplit(endpoint)
    answered = _connects(url.hostname or "", url.port or (443 if url.scheme == "https" else 80))
    _probes[endpoint] = (now, answered)
    return answered


def _connects(host: str, port: int) -> bool:
    """A TCP connection opens within ``PROBE_TIMEOUT_S``, name resolution included."""
    outcome: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
                outcome.append(True)
        except OSError:
            outcome.append(False)

    # A thread, because name resolution has no timeout of its own; a slow one is left to finish alone.
    probe = threading.Thread(target=attempt, name="hub-probe", daemon=True)
    probe.start()
    probe.join(PROBE_TIMEOUT_S)
    return outcome == [True]
