"""Which cases a run segments: the ones asked for, in the data's order, and one shard of them."""

from __future__ import annotations

from udaseg.errors import UdasegError


def select_cases(
    available: list[str], wanted: list[str] | None, shard: tuple[int, int] | None
) -> list[str]:
    """The requested case ids (in the data's order), then every n-th from i for ``shard=(i, n)``.

    ``wanted``: None for every case of ``available``.

    ``shard`` comes checked from the config (:func:`udaseg.config.values.parse_shard`).

    Raises:
        UdasegError (exit code 2): a wanted case the data does not hold.
    """
    ids = list(available)
    if wanted is not None:
        missing = [c for c in wanted if c not in ids]
        if missing:
            raise UdasegError(
                f"--cases: {', '.join(missing)} not in the data",
                hint=f"the data holds {len(ids)} cases: {', '.join(ids[:10])}"
                + (" ..." if len(ids) > 10 else ""),
                exit_code=2,
            )
        ids = [c for c in ids if c in set(wanted)]
    if shard is not None:
        index, count = shard
        ids = ids[index::count]
    return ids
