"""``nbflow cache info | ls | clear | prune``: the result store, seen through its metadata records only.

Listing and sizing read the small per-entry records (task, size, created, last used, hits), never a
payload, so they are quick on a store of large arrays and safe while kernels write to it. Hit counts and
last-used times are kept with a granularity of a minute (a hit rewrites its record at most that often),
so the latest hits may not show yet.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from nbflow.cli.common import EXIT_OK, Usage, format_size, format_time, parse_age, print_json, table

if TYPE_CHECKING:
    from nbflow.store import ResultStore
    from nbflow.store.record import Record

__all__ = ["clear_command", "info_command", "ls_command", "prune_command"]


def _open(home: Path) -> ResultStore | None:
    """The store under ``home``, or None when there is none (a listing must not create one)."""
    if not (home / "store").is_dir():
        return None
    from nbflow.exceptions import NbflowError
    from nbflow.settings import get_settings
    from nbflow.store import ResultStore

    try:
        settings = get_settings()
        return ResultStore(home, size_limit=settings.size_limit, secret_file=settings.secret_file,
                           strict_buffers=settings.strict_buffers)
    except NbflowError as error:
        raise Usage(str(error)) from None


def _limit() -> int:
    from nbflow.exceptions import NbflowError
    from nbflow.settings import get_settings

    try:
        return get_settings().size_limit
    except NbflowError as error:
        raise Usage(str(error)) from None


def _entry(record: Record) -> dict[str, Any]:
    return {
        "key": record.key,
        "task": record.task_name,
        "size": record.size,
        "created": record.created,
        "last_used": record.last_used,
        "hits": record.hits,
        "expires": record.expires,
        "serializer": record.serializer,
        "run_id": record.run_id,
    }


def info_command(home: Path, *, as_json: bool, out: TextIO) -> int:
    """Entries, sizes, the limit, hit counts, oldest and newest entry, and entries per task."""
    store = _open(home)
    records = list(store.records()) if store is not None else []
    per_task: dict[str, dict[str, int]] = {}
    for record in records:
        task = per_task.setdefault(record.task_name, {"entries": 0, "size": 0, "hits": 0})
        task["entries"] += 1
        task["size"] += record.size
        task["hits"] += record.hits
    created = [record.created for record in records]
    used = [record.last_used for record in records]
    info: dict[str, Any] = {
        "home": str(home),
        "store": str(home / "store"),
        "entries": len(records),
        "size": sum(record.size for record in records),
        "disk_usage": store.disk_usage() if store is not None else 0,
        "size_limit": store.size_limit if store is not None else _limit(),
        "hits": sum(record.hits for record in records),
        "oldest": min(created, default=None),
        "newest": max(created, default=None),
        "last_used": max(used, default=None),
        "expired": sum(1 for r in records if r.expires is not None and r.expires <= time.time()),
        "tasks": per_task,
    }
    if store is not None:
        store.close()
    if as_json:
        print_json(info, out)
        return EXIT_OK
    # (the store's directory is the header line, printed by the command)
    print(f"entries:    {info['entries']} ({info['expired']} expired)"
          + ("" if store is not None else " (empty: nothing stored yet)"), file=out)
    print(f"size:       {format_size(info['size'])} of results, {format_size(info['disk_usage'])} on disk, "
          f"limit {format_size(info['size_limit'])}", file=out)
    print(f"hits:       {info['hits']}", file=out)
    print(f"oldest:     {format_time(info['oldest'])}", file=out)
    print(f"newest:     {format_time(info['newest'])}", file=out)
    print(f"last used:  {format_time(info['last_used'])}", file=out)
    if per_task:
        print(file=out)
        rows = [(name, str(task["entries"]), format_size(task["size"]), str(task["hits"]))
                for name, task in sorted(per_task.items(), key=lambda item: -item[1]["size"])]
        table(("task", "entries", "size", "hits"), rows, out)
    return EXIT_OK


def ls_command(home: Path, *, task: str | None, limit: int | None, as_json: bool, out: TextIO) -> int:
    """One line per entry, most recently used first."""
    if limit is not None and limit <= 0:
        raise Usage(f"--limit must be a positive number, not {limit}")
    store = _open(home)
    records = list(store.records()) if store is not None else []
    if store is not None:
        store.close()
    if task is not None:
        records = [record for record in records if record.task_name == task]
    records.sort(key=lambda record: (record.last_used, record.created), reverse=True)
    total = len(records)
    if limit is not None:
        records = records[:limit]
    if as_json:
        print_json({"home": str(home), "total": total, "entries": [_entry(record) for record in records]}, out)
        return EXIT_OK
    if not records:
        print(f"no cache entries{f' of task {task!r}' if task else ''} in {home}", file=out)
        return EXIT_OK
    rows = [(record.task_name, format_size(record.size), format_time(record.created),
             format_time(record.last_used), str(record.hits), format_time(record.expires), record.key[:24])
            for record in records]
    table(("task", "size", "created", "last used", "hits", "expires", "key"), rows, out)
    if total > len(records):
        print(f"... {total - len(records)} more (--limit)", file=out)
    return EXIT_OK


def clear_command(home: Path, *, task: str | None, older_than: str | None, as_json: bool, out: TextIO) -> int:
    """Delete every entry, or those of one task and/or created longer ago than an age."""
    age = parse_age(older_than) if older_than is not None else None
    store = _open(home)
    removed: list[dict[str, Any]] = []
    count = 0
    if store is not None:
        try:
            if task is None and age is None:
                count = store.clear()
            else:
                cutoff = time.time() - age if age is not None else None
                chosen = [record for record in store.records()
                          if (task is None or record.task_name == task)
                          and (cutoff is None or record.created < cutoff)]
                deleted = store.delete_records(chosen)
                removed = [_entry(record) for record in deleted]
                count = len(deleted)
        finally:
            store.close()
    what = " and ".join(part for part in (
        f"of task {task!r}" if task else "", f"older than {older_than}" if older_than else "") if part)
    if as_json:
        print_json({"home": str(home), "removed": count, "task": task, "older_than": age,
                    "entries": removed}, out)
    else:
        size = sum(entry["size"] for entry in removed)
        print(f"removed {count} cache entr{'y' if count == 1 else 'ies'}{' ' + what if what else ''}"
              + (f" ({format_size(size)})" if removed else ""), file=out)
    return EXIT_OK


def prune_command(home: Path, *, as_json: bool, out: TextIO) -> int:
    """Apply expirations and the size limit now (least recently used entries go first)."""
    store = _open(home)
    if store is None:
        result: dict[str, Any] = {"home": str(home), "removed": 0, "size_before": 0, "size_after": 0,
                                  "size_limit": _limit()}
    else:
        try:
            before = sum(record.size for record in store.records())
            removed = store.prune()
            after = sum(record.size for record in store.records())
            result = {"home": str(home), "removed": removed, "size_before": before, "size_after": after,
                      "size_limit": store.size_limit}
        finally:
            store.close()
    if as_json:
        print_json(result, out)
    else:
        print(f"removed {result['removed']} entr{'y' if result['removed'] == 1 else 'ies'}; "
              f"{format_size(result['size_before'])} -> {format_size(result['size_after'])} "
              f"(limit {format_size(result['size_limit'])})", file=out)
    return EXIT_OK
