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
        UdasegError (exit code 2): a wanted case the data does not hold; a shard that would
            take no case (more shards than cases), so no run publishes an empty result.
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
        if not ids[index::count]:
            raise UdasegError(
                f"--shard {index}/{count} selects no case: the selection holds {len(ids)} "
                f"case{'s' if len(ids) != 1 else ''}, so shard i takes cases i, i+{count}, ...",
                hint=f"split into at most {len(ids)} shards (--shard i/{max(len(ids), 1)})",
                exit_code=2,
            )
        ids = ids[index::count]
    return ids
