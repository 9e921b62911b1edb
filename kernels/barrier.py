"""A bounded barrier between the programs of one group, for kernels whose programs exchange
data through global memory every step (the split variant).

Protocol (PyTorch Inductor's grid barrier, on one monotonic int32 counter per group):
arrive = `debug_barrier` (every warp's stores issued) + one release atomic add at gpu scope;
wait = poll the counter with acquire atomic reads at gpu scope until it reaches
`S * (step + 1)`, then `debug_barrier` (no warp reads exchanged data before the wait is over).
Exchanged data must then be read with L2-coherent loads (`cache_modifier=".cg"`).

The wait is bounded by MAX_POLLS reads: it returns False instead of spinning for ever when a
program of the group never arrives (a group that is not co-resident, a faulty kernel). The
compile gate checks the PTX of these instructions (kernels/report.py, `ordering_faults`).
"""
import triton
import triton.language as tl


@triton.jit
def arrive_and_wait(p_cnt, target, MAX_POLLS: tl.constexpr):
    """Arrive at the group's counter, then wait until `target` arrivals; True if they came
    within MAX_POLLS polls."""
    tl.debug_barrier()
    tl.atomic_add(p_cnt, 1, sem="release", scope="gpu")
    return wait_for(p_cnt, target, MAX_POLLS)


@triton.jit
def wait_for(p_cnt, target, MAX_POLLS: tl.constexpr):
    """Poll the counter (acquire) until it reaches `target`; True if it did within MAX_POLLS
    polls. Ends with a CTA barrier so that no warp reads exchanged data early."""
    arrived = tl.atomic_add(p_cnt, 0, sem="acquire", scope="gpu")
    polls = 1
    while (arrived < target) & (polls < MAX_POLLS):
        arrived = tl.atomic_add(p_cnt, 0, sem="acquire", scope="gpu")
        polls += 1
    tl.debug_barrier()
    return arrived >= target
