"""Stand-ins for lvcreate, lvremove, mount, umount, zfs and btrfs (tests only).

The real tools need block devices, a ZFS pool or a btrfs file system, which the test
machine lacks. Each stand-in appends its argv (one JSON list per line) to
``$MOSAIC_STANDIN_ROOT/calls.log`` and emulates just enough, on plain folders:

- a logical volume ``VG/LV`` is the folder ``$ROOT/lvm/VG/LV``; ``lvcreate -s`` copies
  it (``cp -a``) to ``$ROOT/lvm/VG/NAME``; ``lvremove -f`` deletes that copy (refused
  while it is mounted, as LVM refuses an open volume);
- ``mount -o ro /dev/VG/NAME DIR`` is a real read-only bind mount of the copy on DIR,
  and ``umount DIR`` the real umount (so a mount left behind is a real mount point);
- ``zfs get -H -o value mountpoint DS`` prints ``$ROOT/zfs/<DS, '/' as '%'>``'s
  ``mountpoint`` file; ``zfs snapshot DS@NAME`` copies the mountpoint's content (without
  ``.zfs``) to ``MOUNTPOINT/.zfs/snapshot/NAME``; ``zfs destroy DS@NAME`` deletes it;
- ``btrfs subvolume snapshot -r SRC DEST`` copies SRC to DEST; ``btrfs subvolume
  delete DEST`` deletes it.

A command named in ``$MOSAIC_STANDIN_FAIL`` (space-separated) fails with exit code 5.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(os.environ["MOSAIC_STANDIN_ROOT"])


def fail(msg: str) -> None:
    print(f"{Path(sys.argv[1]).name}: {msg}", file=sys.stderr)
    sys.exit(5)


def real(tool: str) -> str:
    for d in ("/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        if os.path.exists(f"{d}/{tool}"):
            return f"{d}/{tool}"
    fail(f"no real {tool}")
    raise AssertionError


def copy(src: Path, dest: Path, skip: str | None = None) -> None:
    dest.mkdir(parents=True)
    for item in sorted(os.listdir(src)):
        if item != skip:
            subprocess.run(["cp", "-a", str(src / item), str(dest)], check=True)
    shutil.copystat(src, dest)


def lvcreate(args: list[str]) -> None:
    name = args[args.index("-n") + 1]
    vg, lv = args[-1].split("/")
    origin, snap = ROOT / "lvm" / vg / lv, ROOT / "lvm" / vg / name
    if not origin.is_dir():
        fail(f'Volume group "{vg}" has no logical volume "{lv}"')
    if snap.exists():
        fail(f'Logical Volume "{name}" already exists in volume group "{vg}"')
    copy(origin, snap)


def lvremove(args: list[str]) -> None:
    vg, name = args[-1].split("/")
    snap = ROOT / "lvm" / vg / name
    if not snap.is_dir():
        fail(f'Failed to find logical volume "{vg}/{name}"')
    if (ROOT / "mounted" / name).exists():
        fail(f"Logical volume {vg}/{name} contains a filesystem in use.")
    shutil.rmtree(snap)


def mount(args: list[str]) -> None:
    device, target = args[-2], args[-1]
    _, _, vg, name = device.split("/")
    snap = ROOT / "lvm" / vg / name
    if not snap.is_dir():
        fail(f"special device {device} does not exist")
    opts = args[args.index("-o") + 1] if "-o" in args else "rw"
    subprocess.run([real("mount"), "--bind", str(snap), target], check=True)
    if "ro" in opts.split(","):
        subprocess.run([real("mount"), "-o", "remount,ro,bind", target], check=True)
    (ROOT / "mounted").mkdir(exist_ok=True)
    (ROOT / "mounted" / name).write_text(target)


def umount(args: list[str]) -> None:
    target = args[-1]
    done = subprocess.run([real("umount"), target], capture_output=True, text=True)
    if done.returncode != 0:
        fail(done.stderr.strip())
    for rec in (ROOT / "mounted").glob("*"):
        if rec.read_text() == target:
            rec.unlink()


def zfs(args: list[str]) -> None:
    verb = args[0]
    if verb == "get":
        ds = args[-1]
        print((ROOT / "zfs" / ds.replace("/", "%") / "mountpoint").read_text().strip())
        return
    ds, name = args[-1].split("@")
    mp = Path((ROOT / "zfs" / ds.replace("/", "%") / "mountpoint").read_text().strip())
    snap = mp / ".zfs" / "snapshot" / name
    if verb == "snapshot":
        if snap.exists():
            fail(f"cannot create snapshot '{ds}@{name}': dataset already exists")
        copy(mp, snap, skip=".zfs")
    elif verb == "destroy":
        if not snap.exists():
            fail("could not find any snapshots to destroy; check snapshot names.")
        shutil.rmtree(snap)
        for d in (mp / ".zfs" / "snapshot", mp / ".zfs"):
            if not any(d.iterdir()):
                d.rmdir()
    else:
        fail(f"stand-in does not emulate 'zfs {verb}'")


def btrfs(args: list[str]) -> None:
    if args[:2] == ["subvolume", "snapshot"]:
        src, dest = Path(args[-2]), Path(args[-1])
        if dest.exists():
            fail(f"ERROR: target path already exists: {dest}")
        copy(src, dest)
    elif args[:2] == ["subvolume", "delete"]:
        dest = Path(args[-1])
        if not dest.is_dir():
            fail("ERROR: Could not statfs: No such file or directory")
        shutil.rmtree(dest)
    else:
        fail(f"stand-in does not emulate 'btrfs {' '.join(args[:2])}'")


def main() -> None:
    tool, args = sys.argv[1], sys.argv[2:]
    with open(ROOT / "calls.log", "a") as log:
        log.write(json.dumps([tool, *args]) + "\n")
    if tool in os.environ.get("MOSAIC_STANDIN_FAIL", "").split():
        fail("injected failure")
    {
        "lvcreate": lvcreate,
        "lvremove": lvremove,
        "mount": mount,
        "umount": umount,
        "zfs": zfs,
        "btrfs": btrfs,
    }[tool](args)


if __name__ == "__main__":
    main()
