"""Privacy: keyed pseudonyms for customer ids, and the Laplace mechanism for published aggregates.

Pseudonymisation (``privacy.pseudonymize``)
    Every table after bronze (``<domain>_features`` and everything computed from it:
    ``segment_snapshots``, ``segment_migrations``, the CLV columns of ``retail_features``) holds
    ``HMAC-SHA-256(K, customer_id)`` as lower-case hex instead of the id. HMAC is RFC 2104
    (H. Krawczyk, M. Bellare, R. Canetti, *HMAC: Keyed-Hashing for Message Authentication*,
    IETF RFC 2104, 1997) with SHA-256 (block size B = 64 bytes)::

        K0   = K padded with zero bytes to 64 bytes   (a key longer than 64 bytes is SHA-256(K))
        HMAC = SHA256((K0 xor opad) || SHA256((K0 xor ipad) || m))   ipad = 0x36..., opad = 0x5c...

    It is computed by Spark's built-in ``sha2``/``unhex``/``concat`` on the UTF-8 bytes of the id
    (no Python UDF). The padded keys travel as a one-row broadcast frame, not as literals, so
    no query plan, ``explain()`` output or Spark log line shows them. The same id always gets the
    same pseudonym under one key, so joins, snapshots and migrations work unchanged; without the
    key the pseudonym cannot be linked back to the id (or recomputed from a guessed id).

    The key is read by :func:`load_key` from the file ``privacy.key_file`` names (its bytes, one
    trailing newline dropped) or else from the environment variable ``SEGSPARK_PSEUDONYM_KEY``
    (its UTF-8 bytes). It is never part of the settings, so it never reaches the config hash, a
    table, a log line or MLflow. With pseudonymisation on and no key, :func:`load_key` raises
    :class:`~segspark.errors.ConfigError` (exit code 2) before anything is written.

    Bronze tables keep the source ids (they are the input), and so does the generator's
    ``synthetic_truth``. Switching pseudonymisation on, or changing the key, starts new
    identities: a migration across the switch sees every customer as lapsed and new.

Differential privacy (``privacy.epsilon``)
    The Laplace mechanism (C. Dwork and A. Roth, *The Algorithmic Foundations of Differential
    Privacy*, Foundations and Trends in Theoretical Computer Science 9(3-4), 2014, section 3.3):
    adding ``Lap(b)`` noise with scale ``b = sensitivity / epsilon`` to a statistic whose value
    changes by at most ``sensitivity`` when one customer is added or removed makes its release
    epsilon-differentially private. Releasing m statistics of the same customers, each with
    ``epsilon / m``, is epsilon-DP in total (sequential composition, Dwork and Roth theorem 3.16);
    one statistic computed per segment over disjoint segments costs its epsilon once (parallel
    composition). :func:`laplace_scale`, :func:`split_epsilon` and :func:`laplace_noise` are
    the pieces; :mod:`segspark.model.profile` documents which statistics a profile publishes and
    their sensitivities (bounded by clipping each feature to ``privacy.clip``). Noise is seeded
    from ``model.seed`` and the release (domain, as_of), so a re-run publishes the same values.

Example:
    >>> key = load_key(settings.privacy)
    >>> pseudonymize(features, key).select("customer_id").first()[0]
    '5b0b7a6c...'
    >>> laplace_scale(1.0, epsilon=0.5)
    2.0
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segspark.config import PrivacySettings
from segspark.errors import ConfigError, InputError, UsageError

log = logging.getLogger(__name__)

KEY_ENV = "SEGSPARK_PSEUDONYM_KEY"
"""Environment variable holding the pseudonymisation key (when ``privacy.key_file`` is null)."""

BLOCK_SIZE = 64
"""SHA-256's block size in bytes (RFC 2104's B)."""

RECOMMENDED_KEY_BYTES = 32
"""RFC 2104 section 3: keys shorter than the hash output (32 bytes) are discouraged."""

_IPAD = 0x36
_OPAD = 0x5C
_PAD_COLUMNS = ("_segspark_hmac_ipad", "_segspark_hmac_opad")
_warned: set[str] = set()


# --------------------------------------------------------------------------------------------
# the key


def load_key(settings: PrivacySettings, environ: Mapping[str, str] | None = None) -> bytes:
    """The pseudonymisation key: the bytes of ``privacy.key_file``, else ``SEGSPARK_PSEUDONYM_KEY``.

    A file's single trailing newline (``\\n`` or ``\\r\\n``) is dropped, so ``echo`` can write
    it. A missing file, an unset or empty variable and an empty key raise
    :class:`~segspark.errors.ConfigError` (exit code 2) with one line that never contains the
    key. Keys shorter than 32 bytes are accepted with a warning (RFC 2104 section 3).

    Example:
        >>> load_key(settings.privacy, {"SEGSPARK_PSEUDONYM_KEY": "s3cret-0123456789abcdef..."})
        b's3cret-0123456789abcdef...'
    """
    env = os.environ if environ is None else environ
    if settings.key_file:
        path = Path(settings.key_file).expanduser()
        try:
            key = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"privacy.key_file {path} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"privacy.key_file {path} cannot be read: {exc.strerror}") from None
        if key.endswith(b"\r\n"):
            key = key[:-2]
        elif key.endswith(b"\n"):
            key = key[:-1]
        source = f"privacy.key_file {path}"
    else:
        value = env.get(KEY_ENV)
        if not value:
            raise ConfigError(
                f"privacy.pseudonymize is on but there is no key: set {KEY_ENV} or privacy.key_file"
            )
        key = os.fsencode(value)
        source = KEY_ENV
    if not key:
        raise ConfigError(f"the pseudonymisation key in {source} is empty")
    if len(key) < RECOMMENDED_KEY_BYTES and source not in _warned:
        _warned.add(source)
        log.warning(
            "the pseudonymisation key in %s is shorter than %d bytes (RFC 2104 recommends at "
            "least the hash length)",
            source,
            RECOMMENDED_KEY_BYTES,
        )
    return key


def require_key(
    settings: PrivacySettings, environ: Mapping[str, str] | None = None
) -> bytes | None:
    """The key when ``privacy.pseudonymize`` is on (see :func:`load_key`), else None.

    Steps that write below bronze call this first, so a missing key stops them before any
    write, MLflow run or Spark job.

    Example:
        >>> require_key(load_settings(env="test").privacy) is None
        True
    """
    if not settings.pseudonymize:
        return None
    return load_key(settings, environ)


# --------------------------------------------------------------------------------------------
# HMAC-SHA-256 in Spark


def hmac_pads(key: bytes) -> tuple[bytes, bytes]:
    """RFC 2104's ``K0 xor ipad`` and ``K0 xor opad`` for SHA-256 (64 bytes each).

    Example:
        >>> inner, outer = hmac_pads(b"k")
        >>> inner[:2].hex(), outer[:2].hex(), len(inner)
        ('5d36', '375c', 64)
    """
    block = hashlib.sha256(key).digest() if len(key) > BLOCK_SIZE else key
    block = block.ljust(BLOCK_SIZE, b"\x00")
    return bytes(b ^ _IPAD for b in block), bytes(b ^ _OPAD for b in block)


def hmac_sha256(message: Column, inner_pad: Column, outer_pad: Column) -> Column:
    """HMAC-SHA-256 of a string column as lower-case hex, from the pads of :func:`hmac_pads`.

    ``message`` is hashed as its UTF-8 bytes; null stays null. Built from ``sha2``, ``unhex``,
    ``concat`` and ``encode`` only.

    Example:
        >>> df.select(hmac_sha256(F.col("customer_id"), F.col("ipad"), F.col("opad")))
    """
    inner = F.unhex(F.sha2(F.concat(inner_pad, F.encode(message, "UTF-8")), 256))
    return F.sha2(F.concat(outer_pad, inner), 256)


def pseudonymize(df: DataFrame, key: bytes, columns: Sequence[str] = ("customer_id",)) -> DataFrame:
    """``df`` with each of ``columns`` replaced by HMAC-SHA-256(key, value) in hex (same order).

    The pads join as a one-row broadcast frame (data, not plan literals). Values are cast to
    string first; nulls stay null.

    Example:
        >>> pseudonymize(spark.createDataFrame([("C1", 3)], "customer_id string, n int"),
        ...              b"key").first()
        Row(customer_id='e5d1...', n=3)
    """
    if not key:
        raise UsageError("the pseudonymisation key is empty")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"columns to pseudonymise are missing: {', '.join(missing)}")
    clash = [c for c in _PAD_COLUMNS if c in df.columns]
    if clash:
        raise InputError(f"column names reserved for the pseudonymisation: {', '.join(clash)}")
    inner, outer = hmac_pads(key)
    pads = df.sparkSession.createDataFrame(
        [(bytearray(inner), bytearray(outer))],
        f"{_PAD_COLUMNS[0]} binary, {_PAD_COLUMNS[1]} binary",
    )
    ipad, opad = (F.col(c) for c in _PAD_COLUMNS)
    keyed = set(columns)
    return df.crossJoin(F.broadcast(pads)).select(
        *(
            hmac_sha256(F.col(f"`{c}`").cast("string"), ipad, opad).alias(c)
            if c in keyed
            else F.col(f"`{c}`")
            for c in df.columns
        )
    )


# --------------------------------------------------------------------------------------------
# the Laplace mechanism


def split_epsilon(epsilon: float, statistics: int) -> float:
    """The epsilon each of ``statistics`` releases gets under sequential composition.

    Example:
        >>> split_epsilon(1.0, 4)
        0.25
    """
    if not epsilon > 0:
        raise UsageError(f"epsilon must be positive, got {epsilon}")
    if statistics < 1:
        raise UsageError(f"a release needs at least one statistic, got {statistics}")
    return epsilon / statistics


def laplace_scale(sensitivity: float, *, epsilon: float) -> float:
    """The Laplace mechanism's scale ``b = sensitivity / epsilon`` (Dwork and Roth 2014, 3.3).

    Example:
        >>> laplace_scale(10.0, epsilon=0.5)
        20.0
    """
    if not epsilon > 0:
        raise UsageError(f"epsilon must be positive, got {epsilon}")
    if sensitivity < 0:
        raise UsageError(f"sensitivity must not be negative, got {sensitivity}")
    return sensitivity / epsilon


def clip_sensitivity(bounds: tuple[float, float], *, squared: bool = False) -> float:
    """Largest change one customer makes to a sum of values clipped to ``bounds`` (add/remove).

    ``squared``: the sum of squared clipped values.

    Example:
        >>> clip_sensitivity((-2.0, 5.0)), clip_sensitivity((-2.0, 5.0), squared=True)
        (5.0, 25.0)
    """
    lo, hi = bounds
    largest = max(abs(lo), abs(hi))
    return largest * largest if squared else largest


def _noise_seed(seed: int, key: Sequence[object]) -> np.random.SeedSequence:
    text = "\x1f".join(str(part) for part in key).encode("utf-8")
    word = int.from_bytes(hashlib.sha256(text).digest()[:16], "big")
    return np.random.SeedSequence([seed % 2**64, word])


def laplace_noise(scale: float, *, seed: int, key: Sequence[object]) -> float:
    """One draw of ``Lap(scale)``, determined by ``seed`` and ``key`` (e.g. release, statistic,
    segment): the same arguments give the same draw, different keys independent draws.

    Example:
        >>> laplace_noise(2.0, seed=42, key=("retail", "2024-06-30", "customers", 3))
        -1.37...
    """
    if scale < 0:
        raise UsageError(f"the Laplace scale must not be negative, got {scale}")
    if scale == 0:
        return 0.0
    rng = np.random.default_rng(_noise_seed(seed, key))
    return float(rng.laplace(0.0, scale))
