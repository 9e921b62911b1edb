"""The split kernels' failure flag, turned into a clear error without a host sync per call.

A split launch whose barrier wait runs out sets its flag and writes NaN into what it could not
compute (split.py), so a result is never silently wrong. The host learns of it without waiting
for the GPU: the flag is copied to pinned memory behind the launch, and the next split launch
raises SplitBarrierTimeout for any earlier launch that has finished with its flag set;
`check()` waits for the launches in flight and raises for any of them (call it at the end of a
run to hear of a failure in the last split launch). TRITON_RNN_SYNC_CHECK=1 checks every launch
as it ends instead (a host sync per launch). Under CUDA-graph capture nothing is copied: a
replayed launch that fails writes NaN and raises nothing by itself; the flags of captured
launches are kept (a few bytes each) and `check_captured()` reads them after a replay.
"""
import os
import threading

import torch


class SplitBarrierTimeout(RuntimeError):
    """A split-variant launch stopped at a barrier: its programs were not all running."""


_pending = []  # (pinned host copy of the flag, event after the copy, what was launched)
_captured = []  # (flag tensor in a graph's memory, what was launched), kept alive here
_lock = threading.Lock()


def _raise(descriptions: list, earlier: bool) -> None:
    when = "An earlier call's" if earlier else "A"
    raise SplitBarrierTimeout(
        f"triton_rnn: {when} split-variant recurrence ({'; '.join(descriptions)}) stopped at a "
        "barrier: a program waited past its bound for the others of its group (were they not "
        "all resident on the GPU at once?). It wrote NaN into every element it could not "
        "compute. Set TRITON_RNN_SYNC_CHECK=1 to check each launch as it ends.")


def watch(sync: torch.Tensor, description: str) -> None:
    """After a split launch: sync[0] != 0 means that some program's wait ran out."""
    if not sync.is_cuda:  # the interpreter has run the launch to its end already
        if int(sync[0]):
            _raise([description], earlier=False)
        return
    if torch.cuda.is_current_stream_capturing():
        with _lock:  # the graph zeroes and sets it at every replay; keep it readable
            _captured.append((sync, description))
        return
    if os.environ.get("TRITON_RNN_SYNC_CHECK") == "1":
        if int(sync[0].item()):
            _raise([description], earlier=False)
        return
    host = torch.empty(1, dtype=sync.dtype, pin_memory=True)
    host.copy_(sync[:1], non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    with _lock:
        _pending.append((host, event, description))


def check_earlier(wait: bool = False) -> None:
    """Raise for every earlier launch that has finished with its flag set; waits for the
    launches in flight only if `wait`."""
    if not _pending or torch.cuda.is_current_stream_capturing():
        return
    with _lock:
        finished = [entry for entry in _pending if wait or entry[1].query()]
        for entry in finished:
            _pending.remove(entry)
    for _, event, _ in finished:
        event.synchronize()
    failed = [description for host, _, description in finished if int(host[0])]
    if failed:
        _raise(failed, earlier=True)


def check() -> None:
    """Wait for every split launch not yet checked; raise if any of them failed."""
    check_earlier(wait=True)


def check_captured() -> None:
    """For CUDA-graph users: after replays (on the replay's stream, or synchronised), raise
    SplitBarrierTimeout if any split launch captured in a graph failed in its latest replay.
    Reads every captured launch's flag (a host sync)."""
    with _lock:
        captured = list(_captured)
    failed = [description for sync, description in captured if int(sync[0].item())]
    if failed:
        _raise(failed, earlier=True)


def forget_captured() -> None:
    """Let go of the captured launches' flags (after their graphs are gone)."""
    with _lock:
        _captured.clear()
