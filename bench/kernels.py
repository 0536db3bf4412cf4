"""Per-operator forward and forward+backward time of denet.kernels against a named peer.

Each module in bench/kernel_cases/ defines ``cases(device) -> list[dict]`` with keys ``name``,
``ours``, ``peer`` (callable or None), ``bytes`` (compulsory bytes, for GB/s) and optionally
``peer_name``. Ours and the peer are timed interleaved in the same run (A/B/A/B) so clock drift
cancels; the ratio is ours/peer (below 1 means faster than the peer).

    python bench/kernels.py                 # CPU, 2 threads, and CUDA when present
    python bench/kernels.py --device cuda   # one device only
    python bench/kernels.py --only denet_ops roi --match nms roi_pool   # cases named so
"""

import argparse
import datetime
import importlib
import os
import pkgutil
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _time_cpu(fn, reps):
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def _time_cuda(fn, reps):
    # L2 is flushed before every repetition (256 MB > H100's 50 MB), as triton.testing.do_bench does.
    flush = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device="cuda")
    start = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    end = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        flush.zero_()
        start[i].record()
        fn()
        end[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(start, end)) / 1e3


def paired(ours, peer, device, rounds):
    """Median seconds of ``ours`` and ``peer``, measured interleaved after a warm-up."""
    for fn in (ours, peer):
        if fn is not None:
            fn()
            fn()
            _sync(device)
    timer = _time_cuda if device == "cuda" else _time_cpu
    reps = 10 if device == "cuda" else 1
    a, b = [], []
    for _ in range(rounds):
        a.append(timer(ours, reps))
        if peer is not None:
            b.append(timer(peer, reps))
    return statistics.median(a), (statistics.median(b) if b else None)


def copy_bandwidth(device):
    x = torch.empty(512 * 1024 * 1024 // 4, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    t, _ = paired(lambda: y.copy_(x), None, device, rounds=5)
    return 2 * x.numel() * 4 / t


def machine(device):
    if device == "cuda":
        return (
            f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
            f"triton {importlib.import_module('triton').__version__}"
        )
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}"


def run(device, only, rounds, match=None):
    import kernel_cases

    print(f"\n## {device}: {machine(device)}; {datetime.date.today()}")
    bw = copy_bandwidth(device) if device == "cuda" else None
    if bw:
        print(f"measured copy bandwidth (read+write): {bw / 1e9:.0f} GB/s")
    print("| op | ours ms | peer | peer ms | ours/peer |" + (" GB/s | % of copy |" if bw else ""))
    print("|---|---:|---|---:|---:|" + ("---:|---:|" if bw else ""))
    for info in pkgutil.iter_modules(kernel_cases.__path__):
        if only and info.name not in only:
            continue
        module = importlib.import_module(f"kernel_cases.{info.name}")
        for case in module.cases(device):
            if match and not any(m in case["name"] for m in match):
                continue
            t_ours, t_peer = paired(case["ours"], case.get("peer"), device, rounds)
            peer_name = case.get("peer_name", "torchvision" if case.get("peer") else "-")
            ratio = f"{t_ours / t_peer:.2f}" if t_peer else "-"
            row = (
                f"| {case['name']} | {t_ours * 1e3:.3f} | {peer_name} | "
                f"{t_peer * 1e3:.3f} | {ratio} |"
                if t_peer
                else f"| {case['name']} | {t_ours * 1e3:.3f} | {peer_name} | - | - |"
            )
            if bw:
                gbs = case.get("bytes", 0) / t_ours
                row += f" {gbs / 1e9:.0f} | {100 * gbs / bw:.0f}% |"
            print(row, flush=True)


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        action="append",
        help="device(s) to measure (default: cpu, and cuda when present)",
    )
    ap.add_argument(
        "--threads", type=int, default=2, help="CPU threads for ours and the peer (default 2)"
    )
    ap.add_argument("--only", nargs="*", help="case modules to run (roi, deform, denet_ops)")
    ap.add_argument(
        "--match", nargs="*", help="run only cases whose name contains one of these strings"
    )
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds per case (median)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    for device in devices:
        run(device, args.only, args.rounds, args.match)


if __name__ == "__main__":
    main()
