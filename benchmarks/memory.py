"""Peak memory of `python -m asyncdl` on one big file and on a long URL list, against a loopback nginx.

Run it as root, like bench.py (whose nginx, output file system and timing helpers it uses):

    python benchmarks/memory.py                     # (i) one 1 GiB file, (ii) a list of 100,000 URLs
    python benchmarks/memory.py --size-mib 256 --urls 20000 --asyncdl-args="-x 8"

Peak RSS comes from `/usr/bin/time -f '%M'`. Targets: under 64 MiB for (i) and under 200 MiB for (ii):
memory must stay flat whatever the file size and bounded whatever the list length. Exit status 0 when both
targets are met, 1 when one is missed or a download fails, 2 when nginx, GNU time or asyncdl is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from bench import (
    Dataset,
    GiB,
    KiB,
    MiB,
    Nginx,
    OutputArea,
    ToolSetup,
    Workload,
    area_sizes,
    check_asyncdl,
    find_nginx,
    interrupt_on_sigterm,
    preflight,
    resolve_commit,
    run_timed,
    snapshot_package,
    tool_command,
    tool_environment,
    tool_version,
    verify_output,
)

FILE_TARGET_MIB = 64
LIST_TARGET_MIB = 200


class AsyncdlUnavailable(Exception):
    """`python -m asyncdl` does not start."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--size-mib", type=int, default=GiB // MiB, help="size of the big file (default 1024)"
    )
    parser.add_argument("--urls", type=int, default=100_000, help="length of the URL list (default 100,000)")
    parser.add_argument("--asyncdl-args", default="", help="extra arguments for asyncdl, as one string")
    parser.add_argument("--python", default=sys.executable, help="the Python that runs asyncdl")
    parser.add_argument(
        "--asyncdl-rev", metavar="REV", help="measure asyncdl as committed at REV (default: the working tree)"
    )
    parser.add_argument("--fs", choices=("ext4", "tmpfs", "dir"), default="ext4", help="output file system")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds before a run is killed")
    parser.add_argument("--keep", action="store_true", help="leave the temporary directory for inspection")
    args = parser.parse_args(argv)
    if args.asyncdl_rev and resolve_commit(args.asyncdl_rev) is None:
        parser.error(f"--asyncdl-rev: no commit {args.asyncdl_rev!r} in this checkout")
    return args


def measure(args: argparse.Namespace, cleanup: contextlib.ExitStack) -> bool:
    """Run both measurements and print them; True when both targets are met."""
    workloads = [
        (
            Workload(
                "file", f"one {args.size_mib:,} MiB file", 1, args.size_mib * MiB, "files", 1, 0, "disk"
            ),
            FILE_TARGET_MIB,
        ),
        (
            Workload("list", f"{args.urls:,} URLs of 1-byte files", args.urls, 1, "tiny", 1, 0, "disk"),
            LIST_TARGET_MIB,
        ),
    ]
    work = Path(tempfile.mkdtemp(prefix="asyncdl-memory-"))
    work.chmod(0o755)  # nginx workers run as an unprivileged user and must read www/
    if not args.keep:
        cleanup.callback(shutil.rmtree, work, ignore_errors=True)
    home, scratch, www = work / "home", work / "scratch", work / "www"
    for directory in (home, scratch, www):
        directory.mkdir()
    package_root, code = snapshot_package(work / "src", args.asyncdl_rev, python=args.python)
    env = tool_environment(home, package_root)
    problem = check_asyncdl(args.python, env, scratch)
    if problem:
        raise AsyncdlUnavailable(problem)

    size, inodes = area_sizes([w for w, _ in workloads], "disk")
    area = OutputArea(args.fs, work / "out", size_bytes=size, inodes=inodes)
    area.root.mkdir()
    cleanup.callback(area.close, keep_image=args.keep)
    area.setup()
    nginx = Nginx(find_nginx() or "nginx", prefix=work / "nginx", www=www)
    cleanup.callback(nginx.stop)
    nginx.start()

    setup = ToolSetup(args.python, tuple(shlex.split(args.asyncdl_args)))
    version = tool_version("asyncdl", args.python, env, scratch)
    print(f"asyncdl {version} ({code}); output on {area.kind}")
    all_met = True
    for workload, target_mib in workloads:
        dataset = Dataset(
            workload, www=www, lists=work / "lists", base_url=nginx.base_url, out_dir=area.out_dir
        )
        dataset.generate()
        out_dir = area.reset()
        cmd = tool_command("asyncdl", dataset, out_dir, setup)
        measured = run_timed(cmd, timeout_s=args.timeout, cwd=scratch, env=env, scratch=scratch)
        if measured.exit_code != 0 or measured.peak_rss_kib is None:
            print(f"{workload.title}: FAILED (exit {measured.exit_code}): {measured.output_tail[-300:]!r}")
            all_met = False
            continue
        error = verify_output(dataset, out_dir, seed=workload.key)
        rss_mib = measured.peak_rss_kib / KiB
        met = rss_mib < target_mib and error is None
        all_met = all_met and met
        verdict = "met" if met else "MISSED"
        print(
            f"{workload.title}: peak RSS {rss_mib:.0f} MiB (target < {target_mib} MiB: {verdict}); "
            f"{measured.wall_s:.1f} s wall, {(measured.user_s or 0) + (measured.sys_s or 0):.1f} s CPU"
            + (f"; output wrong: {error}" if error else "")
        )
    return all_met


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = preflight()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    try:
        with contextlib.ExitStack() as cleanup, interrupt_on_sigterm():
            return 0 if measure(args, cleanup) else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except AsyncdlUnavailable as exc:
        print(f"`{args.python} -m asyncdl --help` failed: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
