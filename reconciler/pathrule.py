"""The one rule for every lock value that becomes a path: artifact keys, `files:` member names,
`fetch.path` and `fetch.glob`.

A valid name is relative, normalised POSIX: no leading `/`, no `.` or `..` segment, no empty
segment (`a//b`, a trailing `/`), no backslash, no control character (NUL, newline, DEL, ...).
A member name is a single segment (no `/`). Each segment is at most `SEGMENT_MAX` bytes in
UTF-8, which leaves room for the publish step's temp name (`.reconcile-tmp-<name>.<pid>.<hex>`)
under the file system's 255-byte NAME_MAX, so every valid name can be published; a whole name
is at most `PATH_MAX_BYTES`. Version-control folders (`.git`, `.hg`, `.svn`, `.dvc`) are never a
segment of an artifact: storage never writes inside one.
"""

from __future__ import annotations

import fnmatch
import posixpath

# `.reconcile-tmp-` (15) + `.` + pid (<= 7 digits, /proc/sys/kernel/pid_max <= 4194304) + `.` + 16 hex = 40,
# plus margin: the temp name of a 200-byte segment is at most 240 bytes.
SEGMENT_MAX = 200
PATH_MAX_BYTES = 1024
VCS_DIRS = frozenset({".git", ".hg", ".svn", ".dvc"})


def control_char(text: str) -> str | None:
    """The first control character of `text` (as `repr`), or None."""
    for ch in text:
        if ord(ch) < 32 or ord(ch) == 127:
            return repr(ch)
    return None


def path_problem(value: object, *, single: bool = False) -> str | None:
    """Why `value` is not a valid relative storage name, or None when it is.

    `single`: a one-segment name (a folder member), so `/` is refused too.
    """
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    bad = control_char(value)
    if bad:
        return f"contains the control character {bad}"
    if "\\" in value:
        return "contains a backslash (use `/` between folders)"
    segments = value.split("/")
    if ".." in segments:
        return "must not contain a `..` segment"
    if single and "/" in value:
        return "must be a single file name (no `/`)"
    if value.startswith("/"):
        return "must be a relative POSIX path (no leading `/`)"
    if "" in segments or "." in segments:
        return f"must be normalised (write {posixpath.normpath(value).lstrip('/')!r})"
    if len(value.encode("utf-8")) > PATH_MAX_BYTES:
        return f"is longer than {PATH_MAX_BYTES} bytes"
    long = next((s for s in segments if len(s.encode("utf-8")) > SEGMENT_MAX), None)
    if long is not None:
        return (f"has a name segment of {len(long.encode('utf-8'))} bytes; at most {SEGMENT_MAX} "
                "(room for the temp name under the file system's 255-byte limit)")
    return None


def vcs_segment(value: str) -> str | None:
    """The version-control folder name among the segments of `value`, or None."""
    return next((s for s in value.split("/") if s in VCS_DIRS), None)


def glob_match(pattern: str, path: str) -> bool:
    """Whether a repo path matches a `fetch.glob`: fnmatch per `/`-separated segment.

    `*`, `?` and `[...]` never cross a `/`, so `g/*.txt` names the files directly in `g/`, not
    those of `g/sub/`: a folder artifact's members are single names, and a glob can never make
    two subfolders' files collapse onto one name without `check_members` seeing it.
    """
    want, have = pattern.split("/"), path.split("/")
    return len(want) == len(have) and all(fnmatch.fnmatchcase(h, w) for w, h in zip(want, have))


def member_names(paths: list[str]) -> dict[str, str]:
    """member name -> repo path for the files a glob matched; ValueError on a bad or shared name."""
    out: dict[str, str] = {}
    for path in paths:
        name = posixpath.basename(path)
        bad = path_problem(name, single=True)
        if bad:
            raise ValueError(f"the hub lists {path!r}, whose file name {bad}")
        if name in out:
            raise ValueError(f"{out[name]!r} and {path!r} would both be published as {name!r}")
        out[name] = path
    return out
