"""A FUSE file system that loses, at a simulated power cut, everything that was never made durable.

Run as ``python -m tests.store.powercut_fs MOUNTPOINT``; it serves in the foreground and reads commands on
stdin, one per line, answering one line on stdout: ``cut`` (drop what is not durable), ``stats`` (JSON
counts). Unmount it (``umount MOUNTPOINT``) to stop it.

The model is the strict POSIX one: a file's data is durable once the file is fsync'd (fdatasync alike); a
directory entry (create, rename, unlink, mkdir) once its directory is fsync'd. At ``cut`` every file's data
goes back to its last fsync'd content and every directory to its last fsync'd entries; what is no longer
reachable is gone. Files are served with direct I/O, so that the kernel's page cache cannot hold data the
cut has dropped; SQLite's ``-shm`` files are the exception (SQLite maps them, and rebuilds them after a
crash).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
import threading
import time
from dataclasses import dataclass, field

from fuse import FUSE, FuseOSError, Operations


@dataclass(eq=False)
class Inode:
    mode: int
    data: bytearray = field(default_factory=bytearray)
    synced: bytes = b""
    children: dict[str, Inode] = field(default_factory=dict)
    synced_children: dict[str, Inode] = field(default_factory=dict)
    mtime: float = field(default_factory=time.time)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


class PowerCutFS(Operations):
    def __init__(self) -> None:
        self._mutex = threading.RLock()
        self.root = Inode(stat.S_IFDIR | 0o755)
        self.handles: dict[int, Inode] = {}
        self.next_fh = 1
        self.stats = {"cuts": 0, "fsyncs": 0, "dir_fsyncs": 0, "writes": 0, "dropped_bytes": 0}

    # --- the cut -----------------------------------------------------------------------------------------------

    def cut(self) -> None:
        with self._mutex:
            seen: set[int] = set()
            stack = [self.root]
            while stack:
                node = stack.pop()
                if id(node) in seen:
                    continue
                seen.add(id(node))
                if node.is_dir:
                    node.children = dict(node.synced_children)
                    stack.extend(node.children.values())
                else:
                    self.stats["dropped_bytes"] += abs(len(node.data) - len(node.synced))
                    node.data = bytearray(node.synced)
            self.handles.clear()
            self.stats["cuts"] += 1

    # --- lookup ------------------------------------------------------------------------------------------------

    def _split(self, path: str) -> tuple[Inode, str]:
        parent, _, name = path.rstrip("/").rpartition("/")
        return self._get(parent or "/"), name

    def _get(self, path: str) -> Inode:
        node = self.root
        for part in path.strip("/").split("/"):
            if not part:
                continue
            if not node.is_dir or part not in node.children:
                raise FuseOSError(errno.ENOENT)
            node = node.children[part]
        return node

    def _open(self, node: Inode, fi: object, path: str) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = node
        fi.fh = fh  # type: ignore[attr-defined]
        fi.direct_io = 0 if path.endswith("-shm") else 1  # type: ignore[attr-defined]
        fi.keep_cache = 0  # type: ignore[attr-defined]
        return 0

    def _node(self, path: str, fi: object | None) -> Inode:
        fh = getattr(fi, "fh", None) if fi is not None else None
        if fh and fh in self.handles:
            return self.handles[fh]
        return self._get(path)

    # --- operations --------------------------------------------------------------------------------------------

    def getattr(self, path: str, fh: object = None) -> dict[str, float]:
        with self._mutex:
            node = self._get(path)
            size = 4096 if node.is_dir else len(node.data)
            return {"st_mode": node.mode, "st_nlink": 2 if node.is_dir else 1, "st_size": size,
                    "st_mtime": node.mtime, "st_ctime": node.mtime, "st_atime": node.mtime,
                    "st_uid": os.getuid(), "st_gid": os.getgid()}

    def readdir(self, path: str, fh: object) -> list[str]:
        with self._mutex:
            return [".", "..", *self._get(path).children]

    def mkdir(self, path: str, mode: int) -> None:
        with self._mutex:
            parent, name = self._split(path)
            if name in parent.children:
                raise FuseOSError(errno.EEXIST)
            parent.children[name] = Inode(stat.S_IFDIR | mode)

    def rmdir(self, path: str) -> None:
        with self._mutex:
            parent, name = self._split(path)
            if parent.children.get(name) is None:
                raise FuseOSError(errno.ENOENT)
            if parent.children[name].children:
                raise FuseOSError(errno.ENOTEMPTY)
            del parent.children[name]

    def create(self, path: str, mode: int, fi: object = None) -> int:
        with self._mutex:
            parent, name = self._split(path)
            node = parent.children.get(name)
            if node is None:
                node = parent.children[name] = Inode(stat.S_IFREG | (mode & 0o7777))
            return self._open(node, fi, path)

    def open(self, path: str, fi: object) -> int:
        with self._mutex:
            node = self._get(path)
            if fi.flags & os.O_TRUNC:  # type: ignore[attr-defined]
                node.data = bytearray()
            return self._open(node, fi, path)

    def opendir(self, path: str) -> int:
        with self._mutex:
            self._get(path)
            return 0

    def read(self, path: str, size: int, offset: int, fi: object) -> bytes:
        with self._mutex:
            return bytes(self._node(path, fi).data[offset:offset + size])

    def write(self, path: str, data: bytes, offset: int, fi: object) -> int:
        with self._mutex:
            node = self._node(path, fi)
            if offset > len(node.data):
                node.data.extend(b"\0" * (offset - len(node.data)))
            node.data[offset:offset + len(data)] = data
            node.mtime = time.time()
            self.stats["writes"] += 1
            return len(data)

    def truncate(self, path: str, length: int, fh: object = None) -> None:
        with self._mutex:
            node = self._node(path, fh)
            del node.data[length:]
            if length > len(node.data):
                node.data.extend(b"\0" * (length - len(node.data)))

    def fsync(self, path: str, datasync: int, fi: object) -> int:
        with self._mutex:
            node = self._node(path, fi)
            node.synced = bytes(node.data)
            self.stats["fsyncs"] += 1
            return 0

    def fsyncdir(self, path: str, datasync: int, fi: object) -> int:
        with self._mutex:
            node = self._get(path)
            node.synced_children = dict(node.children)
            self.stats["dir_fsyncs"] += 1
            return 0

    def unlink(self, path: str) -> None:
        with self._mutex:
            parent, name = self._split(path)
            if parent.children.pop(name, None) is None:
                raise FuseOSError(errno.ENOENT)

    def rename(self, old: str, new: str) -> None:
        with self._mutex:
            old_parent, old_name = self._split(old)
            new_parent, new_name = self._split(new)
            node = old_parent.children.get(old_name)
            if node is None:
                raise FuseOSError(errno.ENOENT)
            target = new_parent.children.get(new_name)
            if target is not None and target.is_dir and target.children:
                raise FuseOSError(errno.ENOTEMPTY)
            del old_parent.children[old_name]
            new_parent.children[new_name] = node

    def release(self, path: str, fi: object) -> int:
        with self._mutex:
            self.handles.pop(getattr(fi, "fh", 0), None)
            return 0

    def flush(self, path: str, fi: object) -> int:
        return 0

    def releasedir(self, path: str, fi: object) -> int:
        return 0

    def chmod(self, path: str, mode: int) -> int:
        with self._mutex:
            node = self._get(path)
            node.mode = (node.mode & ~0o7777) | (mode & 0o7777)
            return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        return 0

    def utimens(self, path: str, times: object = None) -> int:
        return 0

    def access(self, path: str, amode: int) -> int:
        with self._mutex:
            self._get(path)
            return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 1 << 20, "f_bfree": 1 << 19, "f_bavail": 1 << 19,
                "f_files": 1 << 20, "f_ffree": 1 << 19, "f_namemax": 255}


def _control(fs: PowerCutFS) -> None:
    for line in sys.stdin:
        command = line.strip()
        if command == "cut":
            fs.cut()
            answer = "ok"
        elif command == "stats":
            with fs._mutex:
                answer = json.dumps(fs.stats)
        else:
            answer = f"unknown command {command!r}"
        sys.stdout.write(answer + "\n")
        sys.stdout.flush()


def main() -> None:
    fs = PowerCutFS()
    threading.Thread(target=_control, args=(fs,), daemon=True).start()
    # Timeouts 0: the kernel caches no names or attributes, which the cut could make stale.
    FUSE(fs, sys.argv[1], foreground=True, raw_fi=True, nothreads=False, attr_timeout=0, entry_timeout=0,
         negative_timeout=0)


if __name__ == "__main__":
    main()
