"""Peak memory of one call, as growth above the level just before it: the CUDA
caching allocator's peak on GPU, the resident set's high-water mark (read
from /proc, with glibc made to return freed memory) on CPU."""
import ctypes
import os
import re
import sys
from contextlib import contextmanager

import torch

_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def _glibc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def _proc_status_bytes(field):
    with open("/proc/self/status") as status:
        return int(re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.M).group(1)) * 1024


@contextmanager
def exact_rss_accounting(libc):
    """While inside, glibc serves every allocation of 64 KiB or more with its
    own mmap and returns it on free, so the resident set follows the live
    tensors instead of memory cached by earlier calls. Afterwards the
    threshold is set to 32 MiB, where glibc's own adaptive threshold ends up
    once large tensors have been freed."""
    libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)


def cpu_peak_growth_supported():
    return (sys.platform.startswith("linux") and _glibc() is not None
            and os.access("/proc/self/clear_refs", os.W_OK))


def measure_peak_memory(call, device):
    """(result of call(), bytes): how far memory rose above its level just
    before the call, at the call's peak. CUDA: the caching allocator's peak of
    allocated bytes. CPU (Linux, glibc): the resident set's high-water mark
    (VmHWM, reset through /proc/self/clear_refs). None where not measurable."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = call()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - before
    if device.type != "cpu" or not cpu_peak_growth_supported():
        return call(), None
    libc = _glibc()
    with exact_rss_accounting(libc):
        libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # resets VmHWM to the current resident set
        before = _proc_status_bytes("VmRSS")
        result = call()
        return result, _proc_status_bytes("VmHWM") - before
